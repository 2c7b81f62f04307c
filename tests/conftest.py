"""Shared pytest fixtures for the distil test suite.

`slurm_cluster`: a session-wide, real single-node Slurm cluster on loopback (see
tests/slurm_cluster.py), started on first use and always stopped at the end of the session.

Data prep (tests/test_{indexed,packing,sources,build_shards,verify}.py): `prep` (helpers: run
build_shards in process or a CLI as a subprocess, tokenize documents directly, read shards back
with our reader and megatron-core's, and check that packed sequences hold exactly the documents),
`small_corpus` (three small .txt files), `wordpiece_tokenizer` (a small trained WordPiece
tokenizer) and `small_data_dir` (shards of the small corpus), all session-scoped.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

if TYPE_CHECKING:
    from slurm_cluster import SlurmCluster


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """A started `SlurmCluster` (munged + slurmctld + slurmd under a temp folder).

    Skips when the Slurm/munge binaries are missing or when not running as root (the cluster
    runs with SlurmUser=root). The cluster is stopped, and its daemons killed, even when a test
    fails.
    """
    from slurm_cluster import SlurmCluster, slurm_available

    if not slurm_available():
        pytest.skip("Slurm not installed: needs slurmctld, slurmd, munged, sbatch, squeue, ...")
    if os.geteuid() != 0:
        pytest.skip("the test Slurm cluster runs its daemons as root; run the tests as root")
    with SlurmCluster(tmp_path_factory.mktemp("slurm")) as cluster:
        yield cluster


# --- data prep: corpora, tokenizers and checks shared by tests/test_{indexed,packing,sources,
# build_shards,verify}.py -----------------------------------------------------------------------
REPO = Path(__file__).resolve().parent.parent
AUSTEN = REPO / "data_prep" / "corpus" / "austen"
BERT_UNCASED = REPO / "tests" / "assets" / "bert-base-uncased"
SMALL_SLICE_BYTES = 120_000  # of each novel in the small corpus: fast tests
EDGE_TXT = (
    "A title\n\n\n"
    "A paragraph with CRLF endings,\r\nits second line.\r\n\r\n"
    "   \t \n"  # a line of blanks separates documents too
    "\tIndented   text   with  runs of spaces  \n\n\n\n"
    "Ünïcödé café, naïve façade — “quotes” and 東京.\n\n"
    "x\n\n"
    "\x07\x07\n\n"  # decodable and not blank, but the tokenizer drops it: a 0-token document
    + " ".join(f"word{i % 97} and the {i}" for i in range(400))  # several sequences long
    + "\n\nlast document, no final newline"
)


def txt_documents(path: str | os.PathLike[str]) -> list[str]:
    """The documents of a .txt[.gz|.zst] file by the documented rule, independently of sources.py:
    blocks of non-blank lines (a blank line has only ASCII whitespace), stripped, in order."""
    raw = Path(path).read_bytes()
    if str(path).endswith(".gz"):
        raw = gzip.decompress(raw)
    elif str(path).endswith(".zst"):
        import zstandard

        raw = zstandard.ZstdDecompressor().decompressobj().decompress(raw)
    docs: list[str] = []
    block: list[bytes] = []
    for line in [*raw.split(b"\n"), b""]:
        if line.strip():
            block.append(line)
        elif block:
            docs.append(b"\n".join(block).decode("utf-8").strip())
            block = []
    return docs


class Prep:
    """Helpers of the data-prep tests (the ``prep`` fixture)."""

    txt_documents = staticmethod(txt_documents)

    @staticmethod
    def build(*argv: str | os.PathLike[str]) -> None:
        """``python -m data_prep.build_shards ARGV --quiet``, in this process."""
        from data_prep import build_shards

        build_shards.main([*map(str, argv), "--quiet"])

    @staticmethod
    def cli(
        module: str, *argv: str | os.PathLike[str], **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        """``python -m MODULE ARGV`` in a subprocess (cwd: the repo), output captured."""
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", **kw.pop("env", {})}
        return subprocess.run(
            [sys.executable, "-m", module, *map(str, argv)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=kw.pop("timeout", 300),
            **kw,
        )

    @staticmethod
    def tree(folder: Path) -> dict[str, bytes]:
        """Every file under ``folder`` by relative path, with its bytes."""
        return {
            str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*"))
            if p.is_file()
        }

    @staticmethod
    def expected(
        texts: list[str],
        tokenizer: str | os.PathLike[str],
        seed: int = 1234,
        valid_fraction: float = 0.01,
    ) -> dict[str, list[list[int]]]:
        """Direct tokenization of ``texts`` (in order), split into train/valid as build_shards does."""
        from data_prep.shard_units import is_valid_document
        from data_prep.tokenizer import TextTokenizer

        ids = TextTokenizer(tokenizer).encode_batch(texts)
        key, threshold = str(seed).encode(), int(valid_fraction * 2**64)
        out: dict[str, list[list[int]]] = {"train": [], "valid": []}
        for text, doc in zip(texts, ids):
            out["valid" if is_valid_document(text, key, threshold) else "train"].append(doc)
        return out

    @staticmethod
    def read_split(data_dir: Path, split: str, megatron: bool = False) -> list[list[int]]:
        """Every sequence of a split, in manifest order, read with our reader or megatron-core's."""
        manifest = json.loads((data_dir / "manifest.json").read_text())
        seqs: list[list[int]] = []
        for shard in manifest["splits"][split]["shards"]:
            prefix = str(data_dir / shard["path"])
            if megatron:
                from megatron.core.datasets.indexed_dataset import IndexedDataset

                ds = IndexedDataset(prefix, multimodal=False, mmap=True)
                seqs += [ds[i].tolist() for i in range(len(ds))]
            else:
                from data_prep.indexed import IndexedReader

                reader = IndexedReader(prefix)
                seqs += [reader[i].tolist() for i in range(len(reader))]
        return seqs

    @staticmethod
    def check_full(
        seqs: list[list[int]], docs: list[list[int]], cls: int, sep: int, seq_len: int
    ) -> None:
        """``--pack full``: the sequences are exactly the documents joined by [SEP], cut into
        ``[CLS] ... [SEP]`` pieces; a [SEP] may be dropped only at a sequence boundary, and a
        sequence ends inside a document only when it is full."""
        docs = [d for d in docs if d]
        d, o, started = 0, 0, False
        for k, seq in enumerate(seqs):
            assert len(seq) <= seq_len, f"sequence {k} has {len(seq)} > {seq_len} tokens"
            assert seq[0] == cls and seq[-1] == sep, f"sequence {k} is not [CLS] ... [SEP]"
            inner = seq[1:-1]
            assert inner, f"sequence {k} is empty"
            i = 0
            while i < len(inner):
                if not started or o == len(docs[d]):
                    if started:
                        d, o = d + 1, 0
                        if i > 0:
                            assert inner[i] == sep, f"sequence {k}: no [SEP] between documents"
                            i += 1
                            assert i < len(inner), f"sequence {k} ends with a separator"
                    started = True
                    assert d < len(docs), f"sequence {k}: more tokens than the documents hold"
                take = min(len(inner) - i, len(docs[d]) - o)
                assert inner[i : i + take] == docs[d][o : o + take], (
                    f"sequence {k} differs from document {d} at offset {o}"
                )
                i, o = i + take, o + take
            if o < len(docs[d]):
                assert len(inner) == seq_len - 2, f"sequence {k} ends mid-document but is not full"
        if docs:
            assert (d, o) == (len(docs) - 1, len(docs[-1])), f"documents {d}.. are missing"
        else:
            assert not seqs
        # and the plain statement: framing and separators removed, nothing lost or duplicated
        stream = [t for s in seqs for t in s[1:-1] if t != sep]
        assert stream == [t for doc in docs for t in doc if t != sep]

    @staticmethod
    def check_doc(
        seqs: list[list[int]], docs: list[list[int]], cls: int, sep: int, seq_len: int
    ) -> None:
        """``--pack doc``: each document cut into full pieces (the last shorter), one per sequence."""
        for k, seq in enumerate(seqs):
            assert len(seq) <= seq_len and seq[0] == cls and seq[-1] == sep, f"sequence {k}"
        cap = seq_len - 2
        pieces = [doc[i : i + cap] for doc in docs for i in range(0, len(doc), cap)]
        assert [s[1:-1] for s in seqs] == pieces

    @classmethod
    def check_round_trip(
        cls,
        data_dir: Path,
        texts: list[str],
        tokenizer: str | os.PathLike[str],
        megatron: bool = False,
    ) -> dict[str, Any]:
        """Both splits of DATA_DIR hold exactly the tokenized ``texts`` (see check_full/check_doc).

        ``texts`` must be in unit order; in ``full`` mode each unit packs on its own, which the
        checks allow (a sequence may end after a document without being full).
        """
        manifest = json.loads((data_dir / "manifest.json").read_text())
        settings = manifest["settings"]
        expected = cls.expected(texts, tokenizer, settings["seed"], settings["valid_fraction"])
        check = cls.check_full if settings["pack"] == "full" else cls.check_doc
        special = manifest["special_ids"]
        for split in ("train", "valid"):
            seqs = cls.read_split(data_dir, split)
            check(seqs, expected[split], special["cls"], special["sep"], manifest["seq_len"])
            if megatron:
                assert cls.read_split(data_dir, split, megatron=True) == seqs
            assert manifest["splits"][split]["num_sequences"] == len(seqs)
            assert manifest["splits"][split]["num_tokens"] == sum(map(len, seqs))
        counts = np.zeros(manifest["vocab_size"], dtype=np.int64)
        for doc in expected["train"]:
            np.add.at(counts, doc, 1)
        assert manifest["token_counts"] == counts.tolist()
        return manifest


@pytest.fixture(scope="session")
def prep() -> type[Prep]:
    """The data-prep test helpers (build, cli, tree, expected, read_split, check_*)."""
    return Prep


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three small .txt files: slices of two Austen novels (cut after a blank line) and one of
    edge cases (CRLF, blank lines of spaces, Unicode, a 0-token document, a long document)."""
    folder = tmp_path_factory.mktemp("small_corpus")
    paths = []
    for name in ("persuasion", "northangerabbey"):
        text = gzip.decompress((AUSTEN / f"{name}.txt.gz").read_bytes())
        cut = text.index(b"\n\n", SMALL_SLICE_BYTES) + 2
        paths.append(folder / f"{name}.txt")
        paths[-1].write_bytes(text[:cut])
    paths.append(folder / "edge.txt")
    paths[-1].write_bytes(EDGE_TXT.encode("utf-8"))
    return paths


@pytest.fixture(scope="session")
def wordpiece_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4,000-entry WordPiece tokenizer trained on two Austen novels (train_tokenizer)."""
    from data_prep import train_tokenizer

    out = tmp_path_factory.mktemp("tokenizers") / "wordpiece"
    inputs = [str(AUSTEN / "persuasion.txt.gz"), str(AUSTEN / "northangerabbey.txt.gz")]
    train_tokenizer.main(["--input", *inputs, "--output", str(out), "--vocab-size", "4000"])
    return out


@pytest.fixture(scope="session")
def small_data_dir(
    tmp_path_factory: pytest.TempPathFactory, small_corpus: list[Path], wordpiece_tokenizer: Path
) -> Path:
    """build_shards of ``small_corpus`` (seq-len 64, pack full, valid fraction 0.05, one unit
    and so one shard per file). Read-only: tests that change it work on a copy."""
    out = tmp_path_factory.mktemp("data") / "small"
    Prep.build(
        "--input", *small_corpus, "--tokenizer", wordpiece_tokenizer, "--seq-len", "64",
        "--output", out, "--workers", "1", "--valid-fraction", "0.05", "--unit-max-files", "1",
    )  # fmt: skip
    return out


# --- training: a tiny teacher (tests/test_{models,train,checkpoint,...}.py) ---------------------
@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory: pytest.TempPathFactory, wordpiece_tokenizer: Path) -> Path:
    """A 4-layer, 32-wide BertForMaskedLM over the small WordPiece vocabulary."""
    from pipeline_helpers import make_bert_teacher

    return make_bert_teacher(tmp_path_factory.mktemp("teachers") / "tiny", wordpiece_tokenizer)


@pytest.fixture(scope="session")
def reference_run(
    tmp_path_factory: pytest.TempPathFactory, tiny_teacher: Path, small_data_dir: Path
) -> Path:
    """8 uninterrupted steps on 2 ranks, fp32, checkpoints at 4 and 8, sample log on."""
    from pipeline_helpers import base_args, check_ok, launch

    run = tmp_path_factory.mktemp("ckpt") / "reference"
    args = base_args(
        tiny_teacher,
        small_data_dir,
        run,
        **{"--max-steps": 8, "--save-every": 4, "--train.sample_log": "true"},
    )
    check_ok(launch(args, nproc=2))
    return run


@pytest.fixture(scope="session")
def second_data_dir(tmp_path_factory: pytest.TempPathFactory, wordpiece_tokenizer: Path) -> Path:
    """Shards of another novel (Emma), with the tokenizer of small_data_dir."""
    folder = tmp_path_factory.mktemp("emma")
    text = gzip.decompress((AUSTEN / "emma.txt.gz").read_bytes())
    (folder / "emma.txt").write_bytes(text[: text.index(b"\n\n", 60_000) + 2])
    out = tmp_path_factory.mktemp("data") / "emma"
    Prep.build(
        "--input", folder / "emma.txt", "--tokenizer", wordpiece_tokenizer, "--seq-len", "64",
        "--output", out, "--workers", "1", "--valid-fraction", "0.05",
    )  # fmt: skip
    return out
