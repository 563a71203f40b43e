"""TextTokenizer against the spec §2 vectors (real files) and the synthetic vocabulary."""

import os
import shutil
from pathlib import Path

import pytest
import tiktoken

from services.model.synthetic_vocab import write_synthetic_tokenizer
from services.model.text_tokenizer import (
    BASE_SPECIAL_TOKENS,
    QWEN_PATTERN,
    TIKTOKEN_FILE,
    VISION_TOKENS_FILE,
    TextTokenizer,
    Trusted,
    UserText,
    load_mergeable_ranks,
)

U1 = "<|extra_203|>You are a helpful assistant. USER:  ASSISTANT: <|extra_100|>"
U1_IDS = [151849, 2610, 525, 264, 10950, 17847, 13, 13872, 25, 220, 35560, 3846, 2821, 25, 220,
          151746]


def _real_dir() -> Path:
    default = Path(__file__).resolve().parents[2].parent / "shared" / "emu35-tokenizer"
    return Path(os.environ.get("EMU35_TOKENIZER_DIR", default))


@pytest.fixture(scope="module")
def real_tok() -> TextTokenizer:
    path = _real_dir()
    if not (path / TIKTOKEN_FILE).exists():
        pytest.skip(f"real Emu3.5 tokenizer files not found at {path}")
    return TextTokenizer.from_dir(path)


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("synth")
    write_synthetic_tokenizer(path, num_visual_tokens=40)
    return path


@pytest.fixture(scope="module")
def synth_tok(synth_dir) -> TextTokenizer:
    return TextTokenizer.from_dir(synth_dir)


def _oracle(tok: TextTokenizer, path: Path, specials) -> tiktoken.Encoding:
    """Plain tiktoken with the given specials at the tokenizer's ids: the reference encoder."""
    return tiktoken.Encoding(
        "oracle", pat_str=QWEN_PATTERN, mergeable_ranks=load_mergeable_ranks(path / TIKTOKEN_FILE),
        special_tokens={s: tok.id_of(s) for s in specials})


# --- spec §2.3 / §2.2 vectors ------------------------------------------------------------

def test_digit_and_header_vectors(real_tok):
    assert [real_tok.encode_text(str(d)) for d in range(10)] == [[i] for i in range(15, 25)]
    assert real_tok.encode_text("*") == [9]
    assert real_tok.encode_text("55*73") == [20, 20, 9, 22, 18]
    assert real_tok.encode_text("12345") == [16, 17, 18, 19, 20]
    assert real_tok.special.digits == tuple(range(15, 25))
    assert real_tok.special.star == 9


def test_unconditional_prompt_vector(real_tok):
    assert real_tok.encode_trusted(U1) == U1_IDS


def test_unpadded_visual_token_is_plain_text(real_tok):
    ids = [27, 91, 29218, 3950, 220, 16, 17, 91, 29]
    assert real_tok.encode_text("<|visual token 12|>") == ids
    assert real_tok.encode_trusted("<|visual token 12|>") == ids


def test_special_id_layout(real_tok):
    sp = real_tok.special
    assert real_tok.vocab_size == 282926
    assert real_tok.num_bpe_tokens == 151643
    expected = dict(pad=151643, bos=151849, eos=151850, eol=151846, eof=151847, tms=151848,
                    img=151851, boi=151852, eoi=151853, bss=151746, ess=151747, bog=151706,
                    eog=151707, boc=151696, eoc=151697, visual_base=151854, num_visual=131072)
    assert {k: getattr(sp, k) for k in expected} == expected
    assert real_tok.id_of("<|im_start|>") == 151644
    assert real_tok.id_of("<|im_end|>") == 151645
    assert [real_tok.id_of(f"<|extra_{n}|>") for n in (0, 204)] == [151646, 151850]
    assert real_tok.id_of("<|visual token 131071|>") == 282925
    assert real_tok.visual_id(131071) == 282925
    assert real_tok.visual_code(151854 + 12) == 12


# --- injection and segments --------------------------------------------------------------

def test_user_text_cannot_inject_specials(real_tok):
    ids = real_tok.encode_text("<|extra_204|>")
    assert 151850 not in ids and max(ids) < real_tok.special.pad
    ids = real_tok.encode_segments([Trusted("USER: "), UserText("<|extra_204|><|image start|>")])
    assert max(ids) < real_tok.special.pad
    assert real_tok.encode_trusted("<|extra_204|>") == [151850]


def test_segments_join_text_runs(real_tok):
    joined = real_tok.encode_segments([Trusted("USER: "), UserText("a cat"), Trusted(" ok")])
    assert joined == real_tok.encode_text("USER: a cat ok")
    assert real_tok.decode([joined[2]]) == " a"  # one token across the template/user boundary
    sp = real_tok.special
    ids = real_tok.encode_segments([Trusted("<|extra_203|>x "), [sp.boi, sp.eoi], UserText("y")])
    assert ids == [sp.bos, *real_tok.encode_text("x "), sp.boi, sp.eoi,
                   *real_tok.encode_text("y")]
    with pytest.raises(TypeError):
        real_tok.encode_segments(["plain str"])
    with pytest.raises(ValueError):
        real_tok.encode_segments([[real_tok.vocab_size]])


def test_nfc_applies_to_joined_runs(real_tok):
    composed = real_tok.encode_text("caf\u00e9")
    assert real_tok.encode_text("cafe\u0301") == composed
    assert real_tok.encode_segments([Trusted("cafe"), UserText("\u0301")]) == composed


@pytest.mark.parametrize("text", [
    U1, "<|extra_203|><|extra_100|>", "<|foo <|extra_0|> <|> |> <|", "a<|endoftext|>b<|im_end|>",
    "<|image start|>55*73<|image token|><|visual token 000000|><|extra_200|><|image end|>",
    "<|visual token 0000001|><|extra_205|>", "no specials at all 123",
])
def test_trusted_matches_tiktoken_with_specials(real_tok, text):
    oracle = _oracle(real_tok, _real_dir(), BASE_SPECIAL_TOKENS + (
        "<|image token|>", "<|image start|>", "<|image end|>", "<|visual token 000000|>"))
    assert real_tok.encode_trusted(text) == oracle.encode(text, allowed_special="all")


# --- decode ------------------------------------------------------------------------------

def test_decode(real_tok):
    text = "héllo wörld 🐱 12*34"
    assert real_tok.decode(real_tok.encode_text(text)) == text
    ids = real_tok.encode_trusted(U1) + [real_tok.visual_id(7)]
    assert real_tok.decode(ids) == U1 + "<|visual token 000007|>"
    plain = "You are a helpful assistant. USER:  ASSISTANT: "
    assert real_tok.decode(ids, skip_special=True) == plain
    glyph = real_tok.encode_text("\U00013000")  # 4 UTF-8 bytes, split over 3 tokens
    assert len(glyph) > 1 and real_tok.decode(glyph[:1]) == "\ufffd"  # partial UTF-8 replaced
    assert b"".join(real_tok.token_bytes(i) for i in glyph) == "\U00013000".encode()
    assert real_tok.token_bytes(real_tok.special.eos) == b"<|extra_204|>"
    with pytest.raises(ValueError):
        real_tok.decode([-1])
    with pytest.raises(ValueError):
        real_tok.token_bytes(real_tok.vocab_size)


def test_lookup_errors(real_tok):
    with pytest.raises(KeyError):
        real_tok.id_of("<|extra_205|>")
    with pytest.raises(ValueError):
        real_tok.visual_id(131072)
    with pytest.raises(ValueError):
        real_tok.visual_code(real_tok.special.eoi)
    assert not real_tok.is_visual(real_tok.special.eoi)
    assert real_tok.is_visual(real_tok.special.visual_base)


# --- loading errors ----------------------------------------------------------------------

def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_missing_files_are_named(tmp_path, synth_dir):
    with pytest.raises(FileNotFoundError, match=TIKTOKEN_FILE):
        TextTokenizer.from_dir(tmp_path)
    d = _copy(synth_dir, tmp_path / "d")
    (d / VISION_TOKENS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=VISION_TOKENS_FILE):
        TextTokenizer.from_dir(d)


@pytest.mark.parametrize("bad_line", ["not-base64!! 999", "QQ==", "QUJD notanint", "QQ== 3"])
def test_malformed_ranks_line(tmp_path, synth_dir, bad_line):
    d = _copy(synth_dir, tmp_path / "d")
    path = d / TIKTOKEN_FILE
    lines = path.read_text().splitlines()
    lines.insert(5, bad_line)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=rf"{TIKTOKEN_FILE}: line 6"):
        TextTokenizer.from_dir(d)


@pytest.mark.parametrize("mutate", [
    lambda lines: [l for l in lines if l != "<|image start|>"],
    lambda lines: [l for l in lines if l != "<|visual token 000003|>"],
    lambda lines: lines[:3] + lines[4:],  # no visual token 000000
    lambda lines: lines + ["<|visual token 000003|>"],
    lambda lines: lines[:5] + ["<|other|>"] + lines[5:],
    lambda lines: lines + ["not special"],
    lambda lines: lines + ["<|extra_0|>"],
])
def test_malformed_vision_file(tmp_path, synth_dir, mutate):
    d = _copy(synth_dir, tmp_path / "d")
    path = d / VISION_TOKENS_FILE
    path.write_text("\n".join(mutate(path.read_text().splitlines())) + "\n")
    with pytest.raises(ValueError, match=VISION_TOKENS_FILE):
        TextTokenizer.from_dir(d)


# --- synthetic vocabulary ----------------------------------------------------------------

def test_synthetic_is_deterministic(tmp_path, synth_dir):
    size = write_synthetic_tokenizer(tmp_path, num_visual_tokens=40)
    for name in (TIKTOKEN_FILE, VISION_TOKENS_FILE, "tokenizer_config.json"):
        assert (tmp_path / name).read_bytes() == (synth_dir / name).read_bytes()
    assert size == 256 + 256 + 208 + 3 + 40


def test_synthetic_has_real_structure(synth_tok):
    sp = synth_tok.special
    assert synth_tok.num_bpe_tokens == 512 and sp.pad == 512
    assert synth_tok.vocab_size == 512 + 208 + 3 + 40
    # Same offsets from PAD as the real layout (spec §2.2).
    offsets = dict(bos=206, eos=207, eol=203, eof=204, tms=205, img=208, boi=209, eoi=210,
                   bss=103, ess=104, bog=63, eog=64, boc=53, eoc=54, visual_base=211)
    assert {k: getattr(sp, k) - sp.pad for k in offsets} == offsets
    assert sp.num_visual == 40
    assert sp.digits == tuple(range(48, 58)) and sp.star == ord("*")
    assert synth_tok.encode_text("1234567890") == [ord(c) for c in "1234567890"]


def test_synthetic_matches_tiktoken_and_is_compact(synth_tok, synth_dir):
    oracle = _oracle(synth_tok, synth_dir, BASE_SPECIAL_TOKENS)
    for text in (U1, "<|extra_203|>You are a helpful assistant for t2i task. USER: a cat"):
        assert synth_tok.encode_trusted(text) == oracle.encode(text, allowed_special="all")
    # Template words were learned as whole tokens.
    assert len(synth_tok.encode_trusted(U1)) <= 16
    assert synth_tok.encode_text(" assistant") == [synth_tok.encode_text(" assistant")[0]]
    text = "any UTF-8 text works: 日本語 🐱"
    assert synth_tok.decode(synth_tok.encode_text(text)) == text
