"""Fixtures of the data tests: a tiny local BERT tokenizer for the MIntRec and MOSI CSV readers."""

from __future__ import annotations

from pathlib import Path

import pytest

# ---------------------------------------------------------------------------------------------------------
# MIntRec and MOSI CSV readers with a tiny local tokenizer (no network, no shared data)


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory) -> Path:
    transformers = pytest.importorskip("transformers")
    d = tmp_path_factory.mktemp("tok")
    words = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words += ["hello", "world", "the", "manager", "we", "are", "good", "bad", "movie", ".", ",", "!", "'"]
    vocab = d / "vocab.txt"
    vocab.write_text("\n".join(words) + "\n")
    import inspect

    cls = transformers.BertTokenizerFast
    arg = (
        "vocab_file" if "vocab_file" in inspect.signature(cls.__init__).parameters else "vocab"
    )  # 4.x vs 5.x
    tok = cls(**{arg: str(vocab)}, do_lower_case=True)
    assert tok("hello")["input_ids"] == [101, 104, 102]
    tok.save_pretrained(str(d))
    return d
