"""Small helpers shared by every layer; they depend on nothing in megagrape but ``errors``.

* :mod:`~megagrape.utils.atomic`        files written whole or not at all (temp file + rename)
* :mod:`~megagrape.utils.distribution`  checks that weights form a distribution (one tolerance)
* :mod:`~megagrape.utils.names`         "did you mean ...?" hints for unknown names
* :mod:`~megagrape.utils.jsonl`         reading JSON-lines files with line-numbered errors
* :mod:`~megagrape.utils.hashing`       sha256 of a file
"""
