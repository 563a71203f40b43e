"""Splitting generated ids into text, chains of thought and images (spec §8.2, §5.1)."""
from __future__ import annotations

import io
import random
import re

import pytest
import torch
from PIL import Image

from services.model.image_tokens import ImageGrid, image_span_ids
from services.model.response import (
    BrokenImage,
    GlobalCot,
    ImageCot,
    ImageEntry,
    IncompleteImage,
    PngImage,
    TextEntry,
    render_images,
    split_response,
)
from services.model.text_tokenizer import TextTokenizer




def _codes(tok: TextTokenizer, h: int, w: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, tok.special.num_visual, (h, w), generator=gen)


def _png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), "red").save(buf, format="PNG")
    return buf.getvalue()


# --- the grammar, entry by entry ----------------------------------------------------------

def test_entries_in_order(tok):
    sp, t = tok.special, tok.encode_text
    a, b = _codes(tok, 2, 3, seed=1), _codes(tok, 1, 4, seed=2)
    ids = ([sp.bog] + t("plan the story") + [sp.eog] + t("Once upon a time.")
           + [sp.boc] + t("a red fox") + [sp.eoc] + image_span_ids(tok, a)
           + t(" The end.") + image_span_ids(tok, b) + [sp.ess, sp.eos])
    assert split_response(tok, ids) == [
        GlobalCot("plan the story"), TextEntry("Once upon a time."), ImageCot("a red fox"),
        ImageEntry(a), TextEntry(" The end."), ImageEntry(b),
    ]


def test_t2i_output_is_one_image(tok):
    codes = _codes(tok, 3, 2)
    ids = image_span_ids(tok, codes) + [tok.special.ess, tok.special.eos]
    (entry,) = split_response(tok, torch.tensor(ids))  # a tensor is accepted too
    assert isinstance(entry, ImageEntry) and entry.grid == ImageGrid(3, 2)
    assert entry.codes.dtype == torch.long and torch.equal(entry.codes, codes)


def test_ess_and_eos_are_removed_wherever_they_are(tok):
    sp, t = tok.special, tok.encode_text
    ids = [sp.ess] + t("Hello") + [sp.eos, sp.ess] + t(" world") + [sp.boc, sp.ess] + t("c") \
        + [sp.eoc, sp.ess, sp.eos]
    assert split_response(tok, ids) == [TextEntry("Hello world"), ImageCot("c")]


def test_whitespace_only_text_is_dropped_but_empty_cots_are_kept(tok):
    sp, t = tok.special, tok.encode_text
    ids = t("\n\n") + [sp.bog, sp.eog] + t(" \t\n") + [sp.boc, sp.eoc] + t("\n") \
        + image_span_ids(tok, _codes(tok, 1, 1)) + t("  \n") + [sp.ess, sp.eos]
    entries = split_response(tok, ids)
    assert [type(e) for e in entries] == [GlobalCot, ImageCot, ImageEntry]
    assert entries[0] == GlobalCot("") and entries[1] == ImageCot("")


def test_text_keeps_surrounding_whitespace_and_other_specials(tok):
    sp, t = tok.special, tok.encode_text
    ids = t("  two\nlines ") + [sp.eol, sp.img] + t("after") + [sp.ess, sp.eos]
    assert split_response(tok, ids) == [
        TextEntry("  two\nlines <|extra_200|><|image token|>after")]


def test_empty_response(tok):
    assert split_response(tok, []) == []
    assert split_response(tok, [tok.special.ess, tok.special.eos]) == []


def test_cot_markers_inside_a_cot_are_deleted(tok):
    sp, t = tok.special, tok.encode_text
    ids = [sp.bog] + t("a") + [sp.bog] + t("b") + [sp.eog] + [sp.boc] + t("c") + [sp.boc] \
        + t("d") + [sp.eoc]
    assert split_response(tok, ids) == [GlobalCot("ab"), ImageCot("cd")]


def test_an_opener_without_closer_is_text(tok):
    sp, t = tok.special, tok.encode_text
    ids = [sp.bog] + t("never closed ") + [sp.boc] + t("cot") + [sp.eoc] + [sp.boc] + t("x")
    assert split_response(tok, ids) == [
        TextEntry("<|extra_60|>never closed "), ImageCot("cot"), TextEntry("<|extra_50|>x")]


def test_spans_end_at_the_first_closer(tok):
    sp, t = tok.special, tok.encode_text
    ids = [sp.boc] + t("one") + [sp.eoc] + t(" mid ") + [sp.boc] + t("two") + [sp.eoc]
    assert split_response(tok, ids) == [ImageCot("one"), TextEntry(" mid "), ImageCot("two")]


def test_text_spelling_a_special_string_stays_text(tok):
    """BPE ids that spell "<|image start|>" are text, not an image (ids, not strings)."""
    sp = tok.special
    spelled = tok.encode_text("see <|image start|>1*1<|image token|> and <|extra_60|>")
    assert sp.boi not in spelled
    assert split_response(tok, spelled + [sp.ess, sp.eos]) == [
        TextEntry("see <|image start|>1*1<|image token|> and <|extra_60|>")]


def test_ids_outside_the_vocabulary_are_rejected(tok):
    with pytest.raises(ValueError, match="token ids"):
        split_response(tok, [0, tok.vocab_size])
    with pytest.raises(ValueError, match="token ids"):
        split_response(tok, [-1])


# --- images that are not complete -------------------------------------------------------

def test_ragged_image_is_reported_broken_and_splitting_goes_on(tok):
    sp, t = tok.special, tok.encode_text
    span = image_span_ids(tok, _codes(tok, 3, 4))
    del span[-3]  # the last row is one code short
    ids = t("before") + span + t("after") + [sp.ess, sp.eos]
    entries = split_response(tok, ids)
    assert [type(e) for e in entries] == [TextEntry, BrokenImage, TextEntry]
    assert "rows are not 3 x 4" in entries[1].reason
    assert entries[2] == TextEntry("after")


def test_image_with_a_non_visual_id_is_broken(tok):
    span = image_span_ids(tok, _codes(tok, 2, 2))
    span[-2] = tok.encode_text("x")[0]
    (entry,) = split_response(tok, span)
    assert isinstance(entry, BrokenImage) and "non-visual id" in entry.reason


def test_image_cut_off_by_the_budget_is_reported_incomplete(tok):
    sp, t = tok.special, tok.encode_text
    span = image_span_ids(tok, _codes(tok, 4, 5))
    cut = span[:-7]
    ids = t("A fox.") + [sp.boc] + t("fox") + [sp.eoc] + t(" Look:") + cut
    assert split_response(tok, ids) == [
        TextEntry("A fox."), ImageCot("fox"), TextEntry(" Look:"),
        IncompleteImage(tokens_seen=len(cut), grid=ImageGrid(4, 5)),
    ]


@pytest.mark.parametrize("keep", [1, 2, 3])
def test_incomplete_image_inside_its_header_has_no_grid(tok, keep):
    span = image_span_ids(tok, _codes(tok, 12, 5))  # header BOI 1 2 * 5 IMG
    assert split_response(tok, span[:keep]) == [IncompleteImage(tokens_seen=keep, grid=None)]


def test_later_text_after_an_unterminated_boi_belongs_to_the_incomplete_image(tok):
    sp, t = tok.special, tok.encode_text
    ids = t("x") + [sp.boi] + t("junk") + [sp.boc] + t("c") + [sp.eoc] + t("y") + [sp.boi]
    assert split_response(tok, ids) == [
        TextEntry("x"), IncompleteImage(1 + len(t("junk")), None), ImageCot("c"),
        TextEntry("y"), IncompleteImage(1, None)]


# --- equality with the string-level definition of spec §8.2 -------------------------------

def _split_as_strings(tok: TextTokenizer, ids: list[int]) -> list[tuple]:
    """Spec §8.2 on the detokenized string: delete ESS/EOS strings, split on the non-greedy
    BOG..EOG, BOC..EOC, BOI..EOI spans, drop whitespace-only text and text with BOI."""
    text = tok.decode(ids).replace("<|extra_101|>", "").replace("<|extra_204|>", "")
    bog, eog, boc, eoc = "<|extra_60|>", "<|extra_61|>", "<|extra_50|>", "<|extra_51|>"
    boi, eoi = "<|image start|>", "<|image end|>"
    pattern = "(" + "|".join(f"{re.escape(a)}.*?{re.escape(b)}"
                             for a, b in ((bog, eog), (boc, eoc), (boi, eoi))) + ")"
    out = []
    for chunk in re.split(pattern, text, flags=re.DOTALL):
        if chunk.startswith(boi) and chunk.endswith(eoi):
            rows = [[int(c) for c in re.findall(r"<\|visual token (\d+)\|>", r)]
                    for r in chunk.split("<|extra_200|>")]
            out.append(("image", rows))
        elif chunk.startswith(bog) and chunk.endswith(eog):
            out.append(("global_cot", chunk.replace(bog, "").replace(eog, "")))
        elif chunk.startswith(boc) and chunk.endswith(eoc):
            out.append(("image_cot", chunk.replace(boc, "").replace(eoc, "")))
        elif chunk.strip() and boi not in chunk:
            out.append(("text", chunk))
    return out


def _as_tuple(entry) -> tuple:
    kind = {TextEntry: "text", GlobalCot: "global_cot", ImageCot: "image_cot"}
    if isinstance(entry, ImageEntry):
        return ("image", entry.codes.tolist())
    return (kind[type(entry)], entry.text)


def _random_response(tok: TextTokenizer, rng: random.Random) -> list[int]:
    """A response of the §5.1 grammar with varied text (whitespace, unicode, newlines)."""
    sp = tok.special
    pieces = ["A fox.", " Step 1:\n", "\n\n", "  ", "red 🦊 fox", "é", "line\nline", "", "\t"]

    def text() -> list[int]:
        return tok.encode_text("".join(rng.choice(pieces) for _ in range(rng.randint(0, 3))))

    ids = [sp.bog] + text() + [sp.eog] if rng.random() < 0.5 else []
    for _ in range(rng.randint(0, 6)):
        kind = rng.random()
        if kind < 0.4:
            ids += text()
        elif kind < 0.65:
            ids += [sp.boc] + text() + [sp.eoc]
        else:
            h, w = rng.randint(1, 4), rng.randint(1, 5)
            ids += image_span_ids(tok, _codes(tok, h, w, seed=rng.randrange(1 << 30)))
    return ids + [sp.ess, sp.eos]


def test_same_entries_as_the_string_definition_on_grammar_outputs(tok):
    rng = random.Random(0)
    for _ in range(150):
        ids = _random_response(tok, rng)
        assert [_as_tuple(e) for e in split_response(tok, ids)] == _split_as_strings(tok, ids)


# --- records ----------------------------------------------------------------------------

def test_png_image_reads_its_size_from_the_header():
    png = PngImage(_png(48, 16))
    assert (png.width, png.height) == (48, 16)
    assert "data" not in repr(png)
    with pytest.raises(ValueError, match="not a PNG"):
        PngImage(b"GIF89a" + bytes(30))
    with pytest.raises(ValueError, match="not a PNG"):
        PngImage(_png(4, 4)[:20])


def test_render_images_replaces_only_images(synth_tok):
    codes = _codes(synth_tok, 2, 3)
    entries = [TextEntry("t"), ImageEntry(codes), BrokenImage("ragged"), IncompleteImage(3)]
    seen = []

    def to_png(c: torch.Tensor) -> PngImage:
        seen.append(c)
        return PngImage(_png(16 * c.shape[1], 16 * c.shape[0]))

    out = render_images(entries, to_png)
    assert out[0] == TextEntry("t") and out[2:] == entries[2:]
    assert (out[1].width, out[1].height) == (48, 32) and torch.equal(seen[0], codes)


def test_records_are_frozen_and_images_compare_by_value(synth_tok):
    codes = _codes(synth_tok, 2, 2)
    assert ImageEntry(codes) == ImageEntry(codes.clone())
    assert ImageEntry(codes) != ImageEntry(codes + 1)
    with pytest.raises(AttributeError):
        TextEntry("a").text = "b"  # type: ignore[misc]
