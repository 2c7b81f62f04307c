"""Corpus sources: turn ``--input`` specs into work units, units into pieces, pieces into documents.

Layouts taken (see ``inputs`` for how a file's layout is recognised):

- plain text in any convention, ``--txt-docs blank|line|file``: blank-line-separated documents,
  one document per line (BooksCorpus sentence files, HF ``binarized_data.py``), or a whole file
  per document (a folder of books);
- JSON lines (``--text-field``), parquet, ``datasets`` ``save_to_disk`` folders and
  ``hf:NAME[:CONFIG]`` (a local folder is read file by file the way ``load_dataset`` finds
  them: ``wikimedia/wikipedia`` and ``bookcorpus`` as downloaded);
- Wikipedia: the ``pages-articles-multistream.xml.bz2`` dump (cut at its bz2 streams, one
  document per article, wikitext turned into text by ``wiki``) and WikiExtractor's output
  (``<doc>`` blocks or ``--json`` lines);
- any of the text layouts compressed with gzip, zstd or bz2, and folders of many small files.

Pipeline: ``plan.plan_units`` cuts the corpus into work units of about ``--unit-size-mb`` (files
grouped, large files cut at record boundaries, dumps at bz2 streams, parquet at row groups; see
``plan``). The main process reads a unit into pieces of about 1 MB of whole records
(``reader.UnitReader``); each tokenizer worker turns a piece into documents
(``documents.piece_documents``). A document longer than ``--max-doc-mb`` is cut at line
boundaries and counted, so memory is bounded by the settings, never by a file, a line or a
document. Units depend only on the inputs and settings, never on the number of workers or array
tasks, so every way of running the job writes the same shards.
"""

from __future__ import annotations

from collections.abc import Iterator

from data_prep.sources.documents import piece_documents
from data_prep.sources.inputs import expand_inputs
from data_prep.sources.plan import plan_units
from data_prep.sources.reader import Piece, UnitReader, unit_input_bytes
from data_prep.sources.rules import TXT_DOCS
from data_prep.sources.units import BadInput, DocStats, ReadOptions, WorkUnit

__all__ = [
    "TXT_DOCS",
    "BadInput",
    "DocStats",
    "Piece",
    "ReadOptions",
    "UnitReader",
    "WorkUnit",
    "expand_inputs",
    "iter_documents",
    "piece_documents",
    "plan_units",
    "unit_input_bytes",
]


def iter_documents(unit: WorkUnit, opts: ReadOptions, stats: DocStats) -> Iterator[str]:
    """Every document of a unit, read in this process (tests, tools); build_shards spreads the
    pieces over its workers instead."""
    reader = UnitReader(opts)
    try:
        for piece in reader.pieces(unit):
            if piece.tail_cut:
                stats.cuts += 1
            yield from piece_documents(piece, opts, stats)
    finally:
        reader.close()
