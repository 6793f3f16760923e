"""Render troff man pages to plain text with man-db and clean the result.

Pages are rendered with ``man --nh --nj -E UTF-8 -l -`` (no hyphenation, no justification,
UTF-8 output, the page source on stdin) at a width of 80 columns, one ``man`` process per
page with a per-page timeout; several pages are rendered at once in threads (each waits on
its own process). This needs the ``man-db`` and ``groff-base`` Debian packages (the ``man``
and ``groff`` programs); the rendered text depends on their versions (man-db 2.11.2 and groff
1.22.4 on Debian 12).

Cleaning (:func:`clean_man_text`) removes the running header and footer lines, the section
that holds a marker such as manpages-l10n's translation credits (which link the GPL 3 text),
and the common 7-column body indent, so that a rendered page reads as text.
"""

from __future__ import annotations

import gzip
import os
import re
import subprocess
import warnings
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from megagrape.errors import DataError

MAN_COMMAND = ("man", "--nh", "--nj", "-E", "UTF-8", "-l", "-")
MAN_WIDTH = 80
# manpages-l10n closes every page with a translation-credits section linking the GPL 3 text
TRANSLATION_MARKERS = ("gnu.org/licenses/gpl-3.0.html",)

_OVERSTRIKE = re.compile(".\x08")
_TITLE = re.compile(r"\S\(\w+\)\s*$")  # "LS(1)" ends both the header and the footer line
_REDIRECT = re.compile(rb"^\.so\s+\S+\s*$")


def page_source(path: str, data: bytes) -> bytes:
    """The troff source of a page file: gunzipped when ``path`` ends with ``.gz``."""
    if path.endswith(".gz"):
        try:
            return gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise DataError(f"{path}: not a gzip file ({exc})") from exc
    return data


def is_redirect(source: bytes) -> bool:
    """True for a ``.so other/page.1`` stub: a page that only includes another page."""
    requests = [
        line.strip()
        for line in source.splitlines()
        if line.strip() and not line.lstrip().startswith((b'.\\"', b"'\\\"", b'\\"'))
    ]
    return len(requests) == 1 and _REDIRECT.match(requests[0]) is not None


def _environment() -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "MANWIDTH": str(MAN_WIDTH),
    }


def render_man_page(source: bytes, timeout: float = 60.0, name: str = "-") -> str | None:
    """Plain text of one page (troff ``source``), or None if man timed out or printed nothing.

    DataError when the ``man`` program is missing.
    """
    try:
        result = subprocess.run(
            MAN_COMMAND,
            input=source,
            capture_output=True,
            timeout=timeout,
            env=_environment(),
            check=False,
        )
    except FileNotFoundError as exc:
        raise DataError(
            "rendering man pages needs the `man` program: install man-db and groff-base "
            "(`apt-get install man-db groff-base`)"
        ) from exc
    except subprocess.TimeoutExpired:
        warnings.warn(f"man page {name}: rendering took over {timeout:g} s, skipped", stacklevel=2)
        return None
    text = result.stdout.decode("utf-8", "replace")
    text = _OVERSTRIKE.sub("", text).replace("\r\n", "\n")
    return text if text.strip() else None


def render_man_pages(
    files: Iterable[tuple[str, bytes]], workers: int = 2, timeout: float = 60.0
) -> list[tuple[str, str]]:
    """``(path, rendered text)`` for every page of ``files`` that is not a ``.so`` stub and
    rendered to something, in input order; ``workers`` pages are rendered at once."""
    sources = []
    for path, data in files:
        source = page_source(path, data)
        if not is_redirect(source):
            sources.append((path, source))

    def one(item: tuple[str, bytes]) -> str | None:
        return render_man_page(item[1], timeout=timeout, name=item[0])

    if workers > 1 and len(sources) > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            texts = list(pool.map(one, sources))
    else:
        texts = [one(item) for item in sources]
    return [(path, text) for (path, _), text in zip(sources, texts) if text is not None]


def _sections(lines: list[str]) -> list[list[str]]:
    """Lines grouped into sections; a section starts at a non-indented, non-empty line."""
    sections: list[list[str]] = [[]]
    for line in lines:
        if line and not line[0].isspace():
            sections.append([])
        sections[-1].append(line)
    return [section for section in sections if section]


def clean_man_text(text: str, drop_sections_with: tuple[str, ...] = TRANSLATION_MARKERS) -> str:
    """A rendered page as plain text.

    * the first and last non-empty lines are dropped when they are the running header and
      footer (``LS(1)   User Commands   LS(1)`` / ``GNU coreutils 9.1  2022  LS(1)``);
    * every section (a non-indented heading line and the indented lines under it) holding
      one of ``drop_sections_with`` is dropped;
    * trailing blanks are stripped, the indent common to all body lines is removed, and runs
      of blank lines become one.
    """
    lines = [line.rstrip() for line in text.split("\n")]
    filled = [i for i, line in enumerate(lines) if line.strip()]
    if not filled:
        return ""
    if _TITLE.search(lines[filled[-1]]) and len(filled) > 1:
        lines[filled[-1]] = ""
    if _TITLE.search(lines[filled[0]]):
        lines[filled[0]] = ""
    kept = [
        line
        for section in _sections(lines)
        if not any(marker in "\n".join(section) for marker in drop_sections_with)
        for line in section
    ]
    indents = [len(line) - len(line.lstrip(" ")) for line in kept if line[:1] == " "]
    indent = min(indents) if indents else 0
    dedented = [line[indent:] if line[:indent].isspace() else line for line in kept]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(dedented)).strip("\n")
