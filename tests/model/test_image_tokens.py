"""Image grids, size parsing and BOI..EOI spans (spec §3)."""


import pytest
import torch

from services.model.image_tokens import (
    ASPECT_PRESETS,
    ImageGrid,
    ImageSizeError,
    ImageSpanError,
    header_ids,
    image_span_ids,
    parse_header,
    parse_image_size,
    parse_image_span,
)




def _reference_image_string(codes: torch.Tensor) -> str:
    """The reference's image string format (spec §3.1), built independently of image_tokens."""
    h, w = codes.shape
    rows = ["".join(f"<|visual token {int(c):06d}|>" for c in row) for row in codes]
    return f"<|image start|>{h}*{w}<|image token|>" + "<|extra_200|>".join(rows) + "<|image end|>"


# --- grids and sizes ---------------------------------------------------------------------

@pytest.mark.parametrize("h,w,visual,total", [
    (32, 32, 1024, 1063), (45, 45, 2025, 2077), (64, 64, 4096, 4167),
    (128, 128, 16384, 16521), (55, 73, 4015, 4077), (41, 97, 3977, 4025),
    (47, 85, 3995, 4049), (52, 78, 4056, 4115), (73, 55, 4015, 4095), (85, 47, 3995, 4087),
    (78, 52, 4056, 4141), (10, 10, 100, 117), (99, 99, 9801, 9907), (1, 1, 1, 7),
])
def test_grid_counts(h, w, visual, total):
    grid = ImageGrid(h, w)
    assert (grid.num_visual, grid.span_length) == (visual, total)
    assert (grid.height_px, grid.width_px) == (16 * h, 16 * w)


def test_grid_rejects_nonpositive():
    for h, w in [(0, 1), (1, -2), (1.5, 2), (True, 2)]:
        with pytest.raises(ImageSizeError):
            ImageGrid(h, w)


@pytest.mark.parametrize("name,hw", [
    ("1:1", (64, 64)), ("4:3", (55, 73)), ("default", (55, 73)), ("21:9", (41, 97)),
    ("16:9", (47, 85)), ("3:2", (52, 78)), ("3:4", (73, 55)), ("9:16", (85, 47)),
    ("2:3", (78, 52)),
])
def test_presets(name, hw):
    assert ASPECT_PRESETS[name] == ImageGrid(*hw)
    assert parse_image_size(name) == ImageGrid(*hw)


def test_parse_image_size_forms():
    assert parse_image_size("auto") is None
    assert parse_image_size(" AUTO ") is None
    assert parse_image_size("64*64") == ImageGrid(64, 64)
    assert parse_image_size("1024x1024") == ImageGrid(64, 64)
    assert parse_image_size("880X1168") == ImageGrid(55, 73)
    assert parse_image_size("256*1") == ImageGrid(256, 1)
    assert parse_image_size("300*300", max_side=300) == ImageGrid(300, 300)


@pytest.mark.parametrize("spec,match", [
    ("0*5", "1..256"), ("257*1", "1..256"), ("1000x1000", "multiples of 16"),
    ("8192x16", "1..256"), ("abc", "not understood"), ("", "not understood"),
    ("64*", "not understood"), ("-1*4", "not understood"), ("64 * 64", "not understood"),
    (64, "expected a string"),
])
def test_parse_image_size_errors(spec, match):
    with pytest.raises(ImageSizeError, match=match) as info:
        parse_image_size(spec)
    assert isinstance(info.value, ValueError)
    assert repr(spec) in str(info.value)


def test_parse_image_size_custom_limit():
    with pytest.raises(ImageSizeError, match="1..32"):
        parse_image_size("64*64", max_side=32)


# --- spans -------------------------------------------------------------------------------

def test_header_vector(real_tok):
    sp = real_tok.special
    assert header_ids(real_tok, ImageGrid(55, 73)) == [sp.boi, 20, 20, 9, 22, 18, sp.img]
    assert parse_header(real_tok, [sp.boi, 20, 20, 9, 22, 18, sp.img]) == ImageGrid(55, 73)


@pytest.mark.parametrize("shape", [(1, 1), (1, 5), (4, 1), (3, 7), (10, 12), (55, 73)])
def test_span_matches_reference_string(tok, shape):
    gen = torch.Generator().manual_seed(1)
    codes = torch.randint(0, tok.special.num_visual, shape, generator=gen)
    codes[0, 0], codes[-1, -1] = 0, tok.special.num_visual - 1
    ids = image_span_ids(tok, codes)
    assert ids == tok.encode_trusted(_reference_image_string(codes))
    assert len(ids) == ImageGrid(*shape).span_length
    assert ids.count(tok.special.eol) == shape[0] - 1
    assert ids[-2] != tok.special.eol and ids[-1] == tok.special.eoi
    assert torch.equal(parse_image_span(tok, ids), codes)
    assert torch.equal(parse_image_span(tok, torch.tensor(ids)), codes)
    assert parse_header(tok, ids) == ImageGrid(*shape)


def test_span_rejects_bad_codes(synth_tok):
    for codes in (torch.zeros(3, dtype=torch.long), torch.zeros(2, 2), torch.full((2, 2), 100),
                  torch.full((2, 2), -1), torch.zeros(0, 3, dtype=torch.long)):
        with pytest.raises(ImageSpanError):
            image_span_ids(synth_tok, codes)


def _span(tok, h=3, w=4):
    return image_span_ids(tok, torch.arange(h * w).view(h, w) % tok.special.num_visual)


def _malformed(tok):
    sp = tok.special
    good = _span(tok)
    header = header_ids(tok, ImageGrid(3, 4))
    first_eol = good.index(sp.eol)
    return {
        "no BOI": good[1:],
        "no star": [sp.boi, *tok.encode_text("34"), sp.img] + good[len(header):],
        "leading zero": [sp.boi, *tok.encode_text("03*4"), sp.img] + good[len(header):],
        "letter in header": [sp.boi, *tok.encode_text("3*4a"), sp.img] + good[len(header):],
        "no IMG": header[:-1],
        "missing EOI": good[:-1],
        "after EOI": good + [sp.eos],
        "ragged row": good[:first_eol - 1] + good[first_eol:],
        "long row": good[:first_eol] + [sp.visual_base] + good[first_eol:],
        "extra row": good[:-1] + [sp.eol] + good[len(header):first_eol] + [sp.eoi],
        "trailing EOL": good[:-1] + [sp.eol, sp.eoi],
        "text in row": good[:len(header)] + [sp.bos] + good[len(header) + 1:],
        "EOL misplaced": (good[:first_eol - 1] + [sp.eol, good[first_eol - 1]]
                          + good[first_eol + 1:]),
        "empty": [],
    }


MALFORMED_CASES = ("no BOI", "no star", "leading zero", "letter in header", "no IMG",
                   "missing EOI", "after EOI", "ragged row", "long row", "extra row",
                   "trailing EOL", "text in row", "EOL misplaced", "empty")


def test_malformed_cases_listed(synth_tok):
    assert set(_malformed(synth_tok)) == set(MALFORMED_CASES)


@pytest.mark.parametrize("case", MALFORMED_CASES)
def test_malformed_spans_rejected(synth_tok, case):
    with pytest.raises(ImageSpanError):
        parse_image_span(synth_tok, _malformed(synth_tok)[case])


def test_error_messages(synth_tok):
    cases = _malformed(synth_tok)
    with pytest.raises(ImageSpanError, match="missing EOI"):
        parse_image_span(synth_tok, cases["missing EOI"])
    with pytest.raises(ImageSpanError, match=r"row lengths \[3, 4, 4\]"):
        parse_image_span(synth_tok, cases["ragged row"])
    with pytest.raises(ImageSpanError, match="non-visual id .* row 0, column 0"):
        parse_image_span(synth_tok, cases["text in row"])
