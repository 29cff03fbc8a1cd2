"""The WARC workload of `ingest_vs_datatrove.py --pipeline warc`: a generated crawl with a ground truth.

    PYTHON benchmarks/warc_corpus.py CONFIG.json

Run by the benchmark in whichever virtualenv has warcio (numpy is in both). CONFIG.json names the
folder and the mix; this writes `shards` gzipped WARC files (warcinfo, then a request and a response
record per fetch, as a crawler writes them) and, beside them, the ground truth and a sample of the
main texts to train the shared tokenizer on.

A page is main content (the English-like text of the JSONL corpus, or German or French text drawn
from small real word lists) inside one of four site layouts, each with the furniture that
extraction must strip: header, navigation menu, breadcrumbs, cookie banner, sidebar, share
buttons, comments, footer. Planted in it, as in the JSONL corpus: near-duplicates (an edited copy
of an earlier page's main text, on another site with another layout) and near-misses below the
threshold, junk main content the Gopher rules must drop, pages whose body has nothing to extract,
and non-HTML responses (robots.txt, images) that are not documents at all. A few German and French
pages are served as windows-1252, declared in the HTTP header and a meta tag.
"""

from __future__ import annotations

import html
import io
import json
import re
import sys
import unicodedata
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from synthetic_text import (
    JUNK_KINDS,
    Vocabulary,
    make_copy,
    make_document,
    make_junk,
    make_vocabulary,
    render,
)
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

# Small real word lists: the function words at their usual share of running text carry most of
# what a language identifier sees; the content words give the text its letters (umlauts, accents).
GERMAN_FUNCTION = str.split(
    "der die das und in zu den von ist nicht mit dem sich des auf für ein eine als auch es an werden aus er hat "
    "dass sie nach bei um noch wie einem über einen so zum war haben nur oder aber vor zur bis mehr durch man "
    "sein wurde sei wird sind ihre können schon wenn diese hier"
)
GERMAN_CONTENT = str.split(
    "Stadt Jahr Zeit Arbeit Leben Menschen Kinder Schule Wasser Straße Regierung Land Geschichte Wirtschaft "
    "Unternehmen Gemeinde Woche Frage Beispiel Entwicklung Gesellschaft Forschung Bürger Ergebnis Haus Markt "
    "Familie Kirche Bahnhof Brücke Gebäude Verkehr Nachbarn Zukunft Erfahrung Möglichkeit Bedeutung Umwelt "
    "Landschaft Wissenschaft Sprache Zeitung Bericht Verwaltung Ausstellung Veranstaltung Mannschaft Spiel "
    "neue große kleine alte wichtige deutsche öffentliche eigenen letzten ersten gemeinsamen schwierige "
    "ländlichen städtischen schnelle ruhige gründliche ausführliche zahlreiche verschiedene bekannte "
    "sagte erklärte zeigte gehört bleibt kommt gibt macht steht liegt geht findet führte erhielt "
    "entwickelt gebaut geplant beschlossen eröffnet untersucht verändert gefördert vorgestellt "
    "heute gestern bereits wieder immer jedoch deshalb außerdem besonders ziemlich wirklich zunächst "
    "Bürgermeister Rathaus Haushalt Förderung Ausbildung Gesundheit Versorgung Verbindung Planung "
    "Mitarbeiter Öffentlichkeit Kreis Bezirk Verein Landwirtschaft Schüler Lehrer Größe Häuser Wälder"
)
FRENCH_FUNCTION = str.split(
    "de la le et les des en un une du est que pour dans qui pas sur au par plus ne se il avec ce sont elle "
    "mais ou comme nous leur aux ont été tout cette ses son sa été aussi bien peut entre sans dont même "
    "très où après avant"
)
FRENCH_CONTENT = str.split(
    "ville année temps travail vie gens enfants école eau rue gouvernement pays histoire économie entreprise "
    "commune semaine question exemple développement société recherche citoyens résultat maison marché famille "
    "église gare pont bâtiment circulation voisins avenir expérience possibilité importance environnement "
    "paysage science langue journal rapport administration exposition événement équipe match région "
    "nouvelle grande petite ancienne importante française publique propre dernière première commune difficile "
    "rurale urbaine rapide calme détaillée nombreuses différentes connue "
    "déclaré expliqué montré appartient reste vient donne fait trouve conduit reçu développé construit prévu "
    "décidé ouvert étudié changé soutenu présenté aujourd'hui hier déjà encore toujours cependant donc surtout "
    "vraiment d'abord maire mairie budget formation santé approvisionnement liaison planification salariés "
    "département quartier association agriculture élèves professeurs forêts château fenêtre"
)

# Each site's furniture, in its language: menu | footer links | cookie banner | its buttons |
# sidebar title | comments title (lists separated by commas)
FURNITURE = {
    language: tuple(part.split(", ") if i in (0, 1, 3) else part for i, part in enumerate(parts.split(" | ")))
    for language, parts in {
        "en": "Home, News, Politics, Business, Science, Culture, Sport, Opinion, About us, Contact"
        " | Privacy policy, Terms of use, Cookie settings, Imprint, Advertise, Careers, Help"
        " | We use cookies and similar technologies to improve your experience, analyse traffic and show"
        " personalised content. By clicking Accept all you agree to this; you can change your choice at any time."
        " | Accept all, Reject all, Manage preferences | Most read | Comments",
        "de": "Startseite, Nachrichten, Politik, Wirtschaft, Wissen, Kultur, Sport, Meinung, Über uns, Kontakt"
        " | Datenschutz, Nutzungsbedingungen, Cookie-Einstellungen, Impressum, Werbung, Karriere, Hilfe"
        " | Wir verwenden Cookies und ähnliche Technologien, um Ihre Erfahrung zu verbessern, Zugriffe zu"
        " analysieren und personalisierte Inhalte anzuzeigen. Mit Alle akzeptieren stimmen Sie dem zu."
        " | Alle akzeptieren, Alle ablehnen, Einstellungen | Meistgelesen | Kommentare",
        "fr": "Accueil, Actualités, Politique, Économie, Sciences, Culture, Sport, Opinions, Qui sommes-nous, Contact"
        " | Confidentialité, Conditions d'utilisation, Paramètres des cookies, Mentions légales, Publicité,"
        " Carrières, Aide"
        " | Nous utilisons des cookies et des technologies similaires pour améliorer votre expérience, analyser"
        " le trafic et afficher des contenus personnalisés. En cliquant sur Tout accepter, vous y consentez."
        " | Tout accepter, Tout refuser, Gérer les préférences | Les plus lus | Commentaires",
    }.items()
}
LAYOUTS = ("news", "blog", "wiki", "magazine")
SITES = 40  # hosts; each has one layout and one language
Site = tuple[str, str, str]  # host, layout, language


def language_vocabulary(function_words: list[str], content_words: list[str]) -> Vocabulary:
    """Function words at 45% of running text (Zipf among themselves), content words Zipf-like."""
    function_weights = 1.0 / np.arange(1, len(function_words) + 1) ** 0.9
    content_weights = 1.0 / (np.arange(1, len(content_words) + 1) + 10) ** 0.8
    weights = np.concatenate(
        [0.45 * function_weights / function_weights.sum(), 0.55 * content_weights / content_weights.sum()]
    )
    return Vocabulary(function_words + content_words, np.cumsum(weights))


@dataclass
class Page:
    url: str
    language: str
    kind: str  # base, dup, miss, junk:<rule>, empty
    main_text: str  # what the page's main content says (paragraphs joined by blank lines)
    original: str | None = None  # the url a dup or miss copies
    jaccard: float = 0.0  # a copy's true shingle Jaccard with its original
    encoding: str = "utf-8"


@dataclass
class Config:
    directory: str
    pages: int
    shards: int
    seed: int
    shingle_words: int
    jaccard: float
    duplicates: float = 0.10
    near_misses: float = 0.02
    junk: float = 0.05
    german: float = 0.10
    french: float = 0.08
    empty: float = 0.01
    non_html: float = 0.02  # extra records that are not documents (robots.txt, images)
    legacy_encoding: float = 0.05  # share of German and French pages served as windows-1252


@dataclass
class Truth:
    pages: list[Page] = field(default_factory=list)  # HTML pages in crawl order
    non_html: int = 0
    dropped_pairs: int = 0


# ---------------------------------------------------------------------------------------
# HTML


def _links(host: str, labels: list[str]) -> str:
    return "".join(f'<li><a href="https://{host}/{_slug(label)}">{html.escape(label)}</a></li>' for label in labels)


def _slug(text: str) -> str:
    """URL path words in ASCII, as sites write them (für -> fur, Straße -> strasse)."""
    folded = unicodedata.normalize("NFKD", text.lower().replace("ß", "ss")).encode("ascii", "ignore").decode()
    return "-".join(re.sub(r"[^a-z0-9 ]", "", folded).split())[:60]


def _body(paragraphs: list[str]) -> str:
    """The article's HTML blocks: one <p> a line (junk's lines are lines), an ad slot among them."""
    blocks = []
    for i, paragraph in enumerate(paragraphs):
        for line in paragraph.split("\n"):
            blocks.append(f"<p>{html.escape(line)}</p>")
        if i == 2 and len(paragraphs) > 5:
            blocks.append('<div class="ad-slot" aria-hidden="true"><span>Advertisement</span></div>')
    return "\n".join(blocks)


def render_page(rng: np.random.Generator, page: Page, host: str, layout: str, vocabulary: Vocabulary) -> str:
    """The page's main text (its first paragraph the headline) inside the site's layout and furniture."""
    menu, footer, cookie_text, buttons, sidebar_title, comments_title = FURNITURE[page.language]
    title, *paragraphs = page.main_text.split("\n\n")
    headline, article = html.escape(title), _body(paragraphs)
    related = [" ".join(vocabulary.sample(rng, int(rng.integers(4, 9)))).capitalize() for _ in range(5)]
    day = datetime(2026, 1, 1) + timedelta(days=int(rng.integers(0, 330)))
    site = host.split(".")[0].capitalize()
    nav = f'<ul class="menu">{_links(host, menu)}</ul>'
    cookie = (
        f'<div id="cookie-banner" class="cookie-consent" role="dialog"><p>{html.escape(cookie_text)}</p>'
        + "".join(f'<button class="btn">{html.escape(b)}</button>' for b in buttons)
        + "</div>"
    )
    foot = f'<ul class="footer-links">{_links(host, footer)}</ul><p class="copyright">© {day.year} {site}</p>'
    aside = f'<h3>{html.escape(sidebar_title)}</h3><ul class="related">{_links(host, related)}</ul>'
    meta = f'<meta charset="{page.encoding}">' if page.encoding != "utf-8" or rng.random() < 0.5 else ""
    head = (
        f'<!DOCTYPE html>\n<html lang="{page.language}"><head>{meta}<title>{headline} | {site}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<link rel="stylesheet" href="/static/site.css"><script src="/static/app.js" defer></script></head>'
    )
    if layout == "news":
        body = (
            f'<body><header class="site-header"><a class="logo" href="/">{site}</a><nav class="main-nav">{nav}</nav>'
            f"</header>{cookie}<main><article><h1>{headline}</h1>"
            f'<p class="byline">{html.escape(site)} · <time datetime="{day:%Y-%m-%d}">{day:%d.%m.%Y}</time></p>'
            f'{article}</article><aside class="sidebar">{aside}</aside></main><footer class="site-footer">{foot}</footer>'
        )
    elif layout == "blog":
        comments = "".join(
            f'<li class="comment"><span class="author">{html.escape(w.capitalize())}</span><p>'
            f"{html.escape(' '.join(vocabulary.sample(rng, int(rng.integers(8, 25)))))}</p></li>"
            for w in vocabulary.sample(rng, int(rng.integers(0, 4)))
        )
        body = (
            f'<body><div id="header"><div class="brand">{site}</div><div class="navigation">{nav}</div></div>'
            f'<div id="wrapper"><div id="content"><div class="post"><h2 class="post-title">{headline}</h2>'
            f'<div class="post-meta">{day:%B %d, %Y}</div><div class="entry-content">{article}</div>'
            f'<div class="share-buttons"><a href="#">Facebook</a> <a href="#">X</a> <a href="#">E-mail</a></div>'
            f'<div id="comments" class="comments"><h3>{html.escape(comments_title)}</h3><ol>{comments}</ol></div>'
            f'</div></div><div id="sidebar">{aside}</div></div><div id="footer">{foot}</div>{cookie}'
        )
    elif layout == "wiki":
        crumbs = " › ".join(f'<a href="/{_slug(m)}">{html.escape(m)}</a>' for m in menu[: int(rng.integers(2, 4))])
        body = (
            f'<body>{cookie}<div class="topbar">{nav}</div><div class="breadcrumbs">{crumbs}</div>'
            f'<div class="page"><div class="toc"><b>{html.escape(sidebar_title)}</b>{aside}</div>'
            f'<div class="content" role="main"><h1>{headline}</h1>{article}</div></div>'
            f'<div class="page-footer"><p class="last-edited">{day:%Y-%m-%d}</p>{foot}</div>'
        )
    else:  # magazine: sections and a newsletter box
        body = (
            f'<body><header><div class="logo">{site}</div><nav>{nav}</nav>'
            f'<form class="search"><input type="search" name="q"><button>Search</button></form></header>'
            f'<section class="hero"><img src="/img/hero.jpg" alt=""></section><section class="story"><h1>{headline}</h1>'
            f"{article}</section>"
            f'<section class="newsletter"><h3>Newsletter</h3><form><input type="email"><button>{html.escape(buttons[0])}'
            f'</button></form></section><section class="more">{aside}</section><footer>{foot}</footer>{cookie}'
        )
    return f"{head}\n{body}\n</body></html>\n"


def render_empty(host: str, language: str) -> str:
    """A page with furniture and nothing else: a login wall."""
    menu, footer, *_ = FURNITURE[language]
    return (
        f'<!DOCTYPE html>\n<html lang="{language}"><head><title>Login</title></head><body>'
        f'<nav><ul>{_links(host, menu)}</ul></nav><form class="login"><input name="user"><input name="password" '
        f'type="password"><button>Login</button></form><footer><ul>{_links(host, footer)}</ul></footer></body></html>\n'
    )


# ---------------------------------------------------------------------------------------
# the crawl


def generate(config: Config) -> Truth:
    """Pages in crawl order, every copy after its original (never adjacent), written to WARC files."""
    rng = np.random.default_rng(config.seed)
    vocabularies = {
        "en": make_vocabulary(rng, 4000),
        "de": language_vocabulary(GERMAN_FUNCTION, GERMAN_CONTENT),
        "fr": language_vocabulary(FRENCH_FUNCTION, FRENCH_CONTENT),
    }
    hosts = {"en": ("daily", "com"), "de": ("zeitung", "de"), "fr": ("journal", "fr")}
    sites = []
    for i in range(SITES):  # 60% English, 20% German, 20% French sites
        language = "en" if i < SITES * 0.6 else "de" if i < SITES * 0.8 else "fr"
        name, tld = hosts[language]
        sites.append((f"{name}{i}.example.{tld}", LAYOUTS[i % len(LAYOUTS)], language))
    by_language = {lang: [s for s in sites if s[2] == lang] for lang in vocabularies}
    n = config.pages
    n_copies = round(n * config.duplicates) + round(n * config.near_misses)
    n_base = n - n_copies
    languages = rng.choice(
        ["en", "de", "fr"], n_base, p=[1 - config.german - config.french, config.german, config.french]
    )
    kinds = rng.choice(["base", "junk", "empty"], n_base, p=[1 - config.junk - config.empty, config.junk, config.empty])
    clean = np.flatnonzero(kinds == "base")
    eligible = clean[clean < int(n_base * 0.9)]
    chosen = rng.choice(eligible, n_copies, replace=False)
    copy_kind = {int(i): ("dup" if k < round(n * config.duplicates) else "miss") for k, i in enumerate(chosen)}

    entries: list[tuple[float, Page, Site]] = []  # (order key, page, the site that serves it)
    truth = Truth()
    texts_sample: list[str] = []
    for position in range(n_base):
        language, kind = str(languages[position]), str(kinds[position])
        vocabulary = vocabularies[language]
        site = pick_site(rng, by_language[language])
        slug = _slug(" ".join(vocabulary.sample(rng, 3)))
        url = f"https://{site[0]}/{day_path(rng)}/{slug}-{position}"
        encoding = "windows-1252" if language != "en" and rng.random() < config.legacy_encoding else "utf-8"
        title = " ".join(w.capitalize() for w in vocabulary.sample(rng, int(rng.integers(3, 8))))
        if kind == "empty":
            entries.append((position, Page(url, language, "empty", ""), site))
        elif kind == "junk":
            rule = JUNK_KINDS[int(rng.integers(len(JUNK_KINDS)))]
            text = title + "\n\n" + make_junk(rng, vocabulary, rule)
            entries.append((position, Page(url, language, "junk:" + rule, text, encoding=encoding), site))
        else:
            document = make_document(rng, vocabulary, int(rng.integers(150, 501)))
            if len(document[0]) > 1 or document[0][0][-1].endswith((".", "?", "!")):
                document.insert(0, [title.split()])  # every article has a headline
            text = render(document)
            entries.append((position, Page(url, language, "base", text, encoding=encoding), site))
            if len(texts_sample) < 5000:
                texts_sample.append(text)
            if position not in copy_kind:
                continue
            made = make_copy(rng, vocabulary, document, text, copy_kind[position], config.shingle_words, config.jaccard)
            if made is None:
                truth.dropped_pairs += 1
            else:  # the same story syndicated on another site of its language, later in the crawl
                copy_text, score, _ = made
                other = pick_site(rng, by_language[language])
                copy_url = f"https://{other[0]}/{day_path(rng)}/{slug}-{position}-2"
                copy = Page(copy_url, language, copy_kind[position], copy_text, url, score)
                key = float(rng.uniform(position + 1.5, max(n_base - 0.5, position + 1.6)))
                entries.append((key, copy, other))
    entries.sort(key=lambda entry: entry[0])
    truth.pages = [entry[1] for entry in entries]
    assert len({page.url for page in truth.pages}) == len(truth.pages), "the ground truth is keyed by URL"
    write_warcs(rng, config, entries, truth, vocabularies)
    directory = Path(config.directory)
    (directory.parent / "tokenizer_sample.json").write_text(json.dumps(texts_sample))
    return truth


def pick_site(rng: np.random.Generator, sites: list[Site]) -> Site:
    return sites[int(rng.integers(len(sites)))]


def day_path(rng: np.random.Generator) -> str:
    day = datetime(2026, 1, 1) + timedelta(days=int(rng.integers(0, 330)))
    return f"{day:%Y/%m/%d}"


def write_warcs(
    rng: np.random.Generator,
    config: Config,
    entries: list[tuple[float, Page, Site]],
    truth: Truth,
    vocabularies: dict[str, Vocabulary],
) -> None:
    directory = Path(config.directory)
    directory.mkdir(parents=True, exist_ok=True)
    per_shard = -(-len(entries) // config.shards)
    fetched = datetime(2026, 11, 20, 3, 0, tzinfo=UTC)
    seen_hosts: set[str] = set()
    for shard in range(config.shards):
        path = directory / f"crawl-{shard:05d}.warc.gz"
        with open(path, "wb") as out:
            writer = WARCWriter(out, gzip=True)
            writer.write_record(
                writer.create_warcinfo_record(
                    path.name, {"software": "tokenworks benchmarks/warc_corpus.py", "format": "WARC 1.1"}
                )
            )
            for _, page, (host, layout, _language) in entries[shard * per_shard : (shard + 1) * per_shard]:
                fetched += timedelta(seconds=float(rng.uniform(0.2, 3.0)))
                if host not in seen_hosts or rng.random() < config.non_html:
                    seen_hosts.add(host)
                    extra = (
                        ("robots.txt", "text/plain", b"User-agent: *\nDisallow: /admin/\n")
                        if rng.random() < 0.5
                        else (
                            f"img/{int(rng.integers(1e6))}.jpg",
                            "image/jpeg",
                            rng.bytes(int(rng.integers(800, 4000))),
                        )
                    )
                    write_fetch(writer, rng, f"https://{host}/{extra[0]}", extra[1], extra[1], extra[2], fetched)
                    truth.non_html += 1
                if page.kind == "empty":
                    markup = render_empty(host, page.language)
                else:
                    markup = render_page(rng, page, host, layout, vocabularies[page.language])
                body = markup.encode(page.encoding, errors="xmlcharrefreplace")
                content_type = f"text/html; charset={page.encoding}"
                write_fetch(writer, rng, page.url, content_type, "text/html", body, fetched)


def write_fetch(
    writer: WARCWriter,
    rng: np.random.Generator,
    url: str,
    content_type: str,
    payload_type: str,
    body: bytes,
    when: datetime,
) -> None:
    """A request record and its response record, with seeded record ids and the crawl's date."""
    date = when.strftime("%Y-%m-%dT%H:%M:%SZ")
    response_id = f"<urn:uuid:{uuid.UUID(bytes=rng.bytes(16), version=4)}>"
    host = url.split("/")[2]
    request = StatusAndHeaders(
        f"GET /{url.split('/', 3)[3]} HTTP/1.1",
        [("Host", host), ("User-Agent", "tokenworks-bench/1.0"), ("Accept", "*/*")],
        is_http_request=True,
    )
    writer.write_record(
        writer.create_warc_record(
            url,
            "request",
            payload=io.BytesIO(b""),
            http_headers=request,
            warc_headers_dict={
                "WARC-Date": date,
                "WARC-Record-ID": f"<urn:uuid:{uuid.UUID(bytes=rng.bytes(16), version=4)}>",
                "WARC-Concurrent-To": response_id,
            },
        )
    )
    headers = StatusAndHeaders(
        "200 OK",
        [("Content-Type", content_type), ("Content-Length", str(len(body))), ("Server", "nginx")],
        protocol="HTTP/1.1",
    )
    writer.write_record(
        writer.create_warc_record(
            url,
            "response",
            payload=io.BytesIO(body),
            length=len(body),
            http_headers=headers,
            warc_headers_dict={
                "WARC-Date": date,
                "WARC-Record-ID": response_id,
                "WARC-Identified-Payload-Type": payload_type,
            },
        )
    )


def main() -> int:
    config = Config(**json.loads(Path(sys.argv[1]).read_text()))
    truth = generate(config)
    out = Path(config.directory).parent / "ground_truth.json"
    out.write_text(json.dumps(asdict(truth)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
