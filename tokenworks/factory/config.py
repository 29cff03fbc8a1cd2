"""What `tokenworks factory` is asked to do: one section per stage, read from `factory.toml`.

Every field has a default, so `tokenworks factory` with no arguments runs the whole line on
the embedded corpus; `--quick` shrinks every budget so the line fits in about a minute and a half.
A TOML file overrides any field. Each section is a pydantic model that forbids unknown keys and
takes no value of another type (an int stands for a float, nothing else is converted), so a
typo never silently falls back to a default: the error is one line naming the file, the
section and the key. Names the late stages read (the preset, the SLO, the lengths, the price
book's hardware) are checked here too, before anything has run.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from tokenworks.errors import ConfigError, TokenworksError

STAGES = ("ingest", "train", "serve", "bench", "flywheel", "plan", "report")
Positive = Annotated[int, Field(ge=1)]


class Section(BaseModel):
    # strict: TOML already gives typed values, so "3" for an int is a mistake, not something to convert.
    model_config = ConfigDict(extra="forbid", strict=True)


class DataSection(Section):
    sources: list[str] = Field(default_factory=list)  # files, directories or globs; empty: Python's own docs
    vocab_size: Positive = 8192
    max_documents: Positive | None = None  # None: every document the sources hold
    workers: Positive = 2

    @field_validator("sources")
    @classmethod
    def _from_the_file(cls, sources: list[str], info: ValidationInfo) -> list[str]:
        return [str(_resolve(source, info)) for source in sources]


class TrainSection(Section):
    preset: str = "nano"  # the preset with the lowest validation loss in 5 minutes on 2 cores
    time_budget_s: float = Field(300.0, gt=0)
    context: Positive = 256
    batch_size: Positive = 8
    lr: float = Field(1e-3, gt=0)
    seed: int = 0

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, preset: str) -> str:
        from tokenworks.model.presets import PRESETS

        if preset not in PRESETS:
            raise ValueError(f"unknown model preset {preset!r}; choose one of {', '.join(PRESETS)}")
        return preset


class ServeSection(Section):
    workers: Positive = 2  # engine processes behind the router (`tokenworks serve --workers`); 1: one plain server
    router_policy: str = "kv"  # with workers > 1: how the router picks a worker (`--router-policy`)
    threads: Positive | None = None  # in all, split between the workers; None: every core
    kv_cache_memory_gib: float = Field(0.5, gt=0)
    max_num_seqs: Positive = 64
    max_num_batched_tokens: Positive = 2048
    port: int = Field(0, ge=0, le=65535)  # 0: any free port
    log_requests: bool = True  # `--log-db WORKDIR/serve/requests.db`: the request log the flywheel stage reads
    smoke_prompt: str = "The Python language"
    smoke_tokens: Positive = 32

    @field_validator("router_policy")
    @classmethod
    def _known_policy(cls, policy: str) -> str:
        return _known_router_policy(policy)


class BenchSection(Section):
    concurrency: list[Positive] = Field(default_factory=lambda: [1, 2, 4, 8, 16, 32], min_length=1)
    input_tokens: str = "128"  # a length distribution, as `tokenworks bench --input-tokens` reads it
    output_tokens: str = "64"
    requests_per_point: Positive = 64  # at least 2 x the concurrency is used at each point
    warmup_requests: int = Field(2, ge=0)
    slo: str = "ttft=1s,tpot=100ms"
    price_book: str | None = None  # None: the packaged price book
    hardware: str = "CPU host"  # an entry of the price book (declared after it, so its check reads the book)
    seed: int = 0
    # The shared-prefix comparison: one workload (K system prompts x M questions each), run once per
    # routing policy on a fresh fleet of the [serve] workers; empty (or one worker): no comparison.
    shared_prefix_policies: list[str] = Field(default_factory=lambda: ["kv", "round-robin"])
    num_prefixes: Positive = 8  # K
    questions_per_prefix: Positive = 8  # M
    prefix_tokens: Positive = 512
    question_tokens: str = "32"
    shared_prefix_output_tokens: str = "32"
    shared_prefix_concurrency: Positive = 8

    @field_validator("input_tokens", "output_tokens", "question_tokens", "shared_prefix_output_tokens")
    @classmethod
    def _a_length(cls, text: str) -> str:
        from tokenworks.bench.workloads import LengthDistribution

        return _checked(LengthDistribution.parse, text)

    @field_validator("shared_prefix_policies")
    @classmethod
    def _known_policies(cls, policies: list[str]) -> list[str]:
        if len(set(policies)) != len(policies):
            raise ValueError(f"a policy is named twice in {policies}")
        return [_known_router_policy(policy) for policy in policies]

    @field_validator("slo")
    @classmethod
    def _an_slo(cls, text: str) -> str:
        from tokenworks.bench.slo import SLO

        return _checked(SLO.parse, text)

    @field_validator("price_book")
    @classmethod
    def _a_book_from_the_file(cls, path: str | None, info: ValidationInfo) -> str | None:
        from tokenworks.bench.economics import PriceBook

        return None if path is None else _checked(PriceBook.load, str(_resolve(path, info)))

    @field_validator("hardware")
    @classmethod
    def _in_the_price_book(cls, hardware: str, info: ValidationInfo) -> str:
        from tokenworks.bench.economics import PriceBook

        if "price_book" in info.data:  # else the book itself was wrong, and that is the error shown
            _checked(PriceBook.load(info.data["price_book"]).get, hardware)
        return hardware


class FlywheelSection(Section):
    """The flywheel stage: docs-QA traffic, corrections, one iteration (tokenworks.flywheel.loop)."""

    enabled: bool = True  # needs the default corpus (the docs-QA workload is made from it) and the request log
    # docs-QA requests sent through `bench`: train-side items at random, or all of them when the corpus
    # has fewer (3,849 with Python 3.11's docs); a LoRA candidate learns more from thousands than from 128
    questions: Positive = 4096
    hard_eval_items: Positive = 48  # held-out items: the frozen hard-eval set
    correction_share: float = Field(0.5, ge=0, le=1)  # of the answers, corrected through /v1/feedback
    max_tokens: Positive = 32
    concurrency: Positive = 8
    # The candidate trains for train_seconds (its schedule sized to them), or train_steps when given
    # (stopping at whichever comes first): about 500-900 steps of the default model on 2 quiet cores.
    train_steps: Positive | None = None
    train_seconds: float = Field(180.0, gt=0)
    lr: float = Field(3e-3, gt=0)
    lora_rank: Positive = 16
    lora_targets: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    # Rehearsal: this share of every training batch is pretraining text (the ingest's train split),
    # which holds the general loss while the docs-QA rows teach.
    replay_fraction: float = Field(0.25, ge=0, lt=1)
    margin: float = Field(0.10, ge=0, lt=1)  # the gate: hard-eval loss down by at least this share
    tolerance: float = Field(0.02, ge=0)  # and the general loss up by at most this share
    general_tokens: Positive = 32768
    served_name: str = "factory-champion"  # the adapter name the champion is served under after a promotion
    seed: int = 0

    @field_validator("lora_targets")
    @classmethod
    def _known_targets(cls, targets: list[str]) -> list[str]:
        from tokenworks.model.adapter import LORA_TARGETS

        unknown = [target for target in targets if target not in LORA_TARGETS]
        if unknown or not targets:
            raise ValueError(f"LoRA targets must be some of {', '.join(LORA_TARGETS)}, got {targets}")
        return targets


class PlanSection(Section):
    """The plan stage: profile, validate against the bench's sweep, cost per GPU (tokenworks.plan)."""

    enabled: bool = True


class FactoryConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    workdir: Annotated[Path, Field(strict=False)] = Path("factory")  # TOML has no path type: text is read as one
    data: DataSection = Field(default_factory=DataSection)
    train: TrainSection = Field(default_factory=TrainSection)
    serve: ServeSection = Field(default_factory=ServeSection)
    bench: BenchSection = Field(default_factory=BenchSection)
    flywheel: FlywheelSection = Field(default_factory=FlywheelSection)
    plan: PlanSection = Field(default_factory=PlanSection)

    @classmethod
    def quick(cls, workdir: Path = Path("factory")) -> FactoryConfig:
        """The whole line in about a minute and a half on 2 cores: less of everything, same stages."""
        bench = BenchSection(concurrency=[1, 4, 16], input_tokens="64", output_tokens="32", requests_per_point=16)
        # the shared-prefix comparison: 16 requests of 256 + 16 prompt tokens, per policy
        bench.num_prefixes, bench.questions_per_prefix, bench.prefix_tokens = 4, 4, 256
        bench.question_tokens, bench.shared_prefix_output_tokens, bench.shared_prefix_concurrency = "16", "16", 4
        return cls(
            workdir=workdir,
            data=DataSection(vocab_size=2048, max_documents=300),
            train=TrainSection(time_budget_s=45.0, context=128),
            serve=ServeSection(kv_cache_memory_gib=0.25, max_num_seqs=16, smoke_tokens=16),
            bench=bench,
            flywheel=FlywheelSection(
                questions=48, hard_eval_items=24, max_tokens=24, train_steps=16, general_tokens=8192
            ),
        )

    @classmethod
    def load(cls, path: Path, quick: bool = False, workdir: Path | None = None) -> FactoryConfig:
        """The defaults (or the quick ones), overridden by the TOML file's sections.

        Relative paths in the file are read from its directory, so the file can travel with its data."""
        try:
            document = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"no factory configuration at {path}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
            raise ConfigError(f"{path} is not valid TOML: {error}") from None
        base = (cls.quick() if quick else cls()).model_dump()
        for name, value in document.items():  # a section names only what changes; the rest keeps the base's
            base[name] = base[name] | value if isinstance(base.get(name), dict) and isinstance(value, dict) else value
        config = _validate(base, str(path), context={"directory": path.parent})
        if workdir is not None:
            config.workdir = workdir
        elif "workdir" in document:
            config.workdir = path.parent / config.workdir
        return config

    def check(self) -> None:
        """Validate again, for a configuration made or changed in code rather than read from a file."""
        _validate(self.model_dump(), "factory settings")

    def section(self, stage: str) -> dict[str, Any]:
        """The settings a stage's output depends on, to fingerprint it for resumption."""
        owned = {"ingest": ["data"], "train": ["train"], "serve": ["serve"], "bench": ["bench"],
                 "flywheel": ["flywheel"], "plan": ["serve", "bench", "plan"], "report": []}  # fmt: skip
        return {name: getattr(self, name).model_dump(mode="json") for name in owned[stage]}

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


SECTIONS: dict[str, type[Section]] = {
    "data": DataSection,
    "train": TrainSection,
    "serve": ServeSection,
    "bench": BenchSection,
    "flywheel": FlywheelSection,
    "plan": PlanSection,
}


def _validate(values: dict[str, Any], where: str, context: dict[str, Any] | None = None) -> FactoryConfig:
    try:
        return FactoryConfig.model_validate(values, context=context)
    except ValidationError as error:
        mistakes = error.errors()
        more = f" (and {len(mistakes) - 1} more)" if len(mistakes) > 1 else ""
        raise ConfigError(f"{where}: {_describe(mistakes[0])}{more}") from None


def _describe(mistake: Any) -> str:
    """One pydantic error as one line: "[train] time_budget_s: input should be a valid number, got 'long'"."""
    first, *rest = mistake["loc"]  # ('train', 'time_budget_s'), ('bench', 'concurrency', 0), ('workdir',)
    section = f"[{first}]" if first in SECTIONS else str(first)
    if mistake["type"] == "extra_forbidden":
        owner, prefix = (SECTIONS[first], f"{section} ") if rest else (FactoryConfig, "")
        known = ", ".join(sorted(owner.model_fields))
        return f"{prefix}unknown setting {str(mistake['loc'][-1])!r}; known: {known}"
    place = section + (f" {rest[0]}" + "".join(f"[{index}]" for index in rest[1:]) if rest else "")
    if mistake["type"] == "model_type":
        return f"{place} should be a table of settings, got {mistake['input']!r}"
    if mistake["type"] == "value_error":  # one of our own checks, whose message says it all
        return f"{place}: {mistake['ctx']['error']}"
    return f"{place}: {mistake['msg'][0].lower()}{mistake['msg'][1:]}, got {mistake['input']!r}"


def _resolve(path: str, info: ValidationInfo) -> Path:
    """A path written in factory.toml, from the file's directory (`context`); as given elsewhere."""
    directory = (info.context or {}).get("directory")
    expanded = Path(path).expanduser()
    return directory / expanded if directory is not None else expanded


def _known_router_policy(policy: str) -> str:
    from tokenworks.router.policies import POLICY_NAMES

    if policy not in POLICY_NAMES:
        raise ValueError(f"unknown router policy {policy!r}; choose one of {', '.join(POLICY_NAMES)}")
    return policy


def _checked(check: Callable[[str], object], text: str) -> str:
    """`text` once `check(text)` accepts it; the project's error becomes pydantic's, to be placed by key."""
    try:
        check(text)
    except TokenworksError as error:
        raise ValueError(str(error)) from None
    return text
