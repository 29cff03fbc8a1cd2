"""`python -m tokenworks.train` and `torchrun --nproc_per_node N -m tokenworks.train`: the
arguments of `tokenworks train`, with the same one-line errors."""

from __future__ import annotations

import sys

from rich.console import Console

from tokenworks.errors import TokenworksError
from tokenworks.train.cli import train_app


def main() -> None:
    try:
        train_app(prog_name="tokenworks.train")
    except TokenworksError as error:
        Console(stderr=True).print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        Console(stderr=True).print("interrupted")
        sys.exit(130)
    finally:
        from tokenworks.train.distributed import shutdown

        shutdown()


if __name__ == "__main__":
    main()
