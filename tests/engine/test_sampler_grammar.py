"""Unit checks of the pieces the engine composes: filters, CFG, masks, grammar, detokenizer."""
from __future__ import annotations

import pytest
import torch

from services.engine.block_pool import BlockPool, OutOfBlocks
from services.engine.detokenizer import IncrementalDetokenizer
from services.engine.grammar import GrammarState, StepKind, grid_from_prompt, header_tokens
from kernels.sampling import guided_scores_reference
from kernels.token_draw import filter_scores_reference
from services.engine.sampler import GrammarMasks
from services.engine.sequence import KVBlocks, Role, Sequence
from services.model.image_tokens import ImageGrid, image_span_ids
from services.model.synthetic_vocab import write_synthetic_tokenizer
from services.model.text_tokenizer import TextTokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    d = tmp_path_factory.mktemp("vocab")
    write_synthetic_tokenizer(d, 64)
    return TextTokenizer.from_dir(d)


def test_top_k_keeps_ties_and_top_p_keeps_the_crossing_token():
    s = torch.tensor([[3.0, 2.0, 2.0, 1.0, 0.0], [3.0, 2.0, 2.0, 1.0, 0.0]])
    one = torch.ones(2, dtype=torch.float64)
    out = filter_scores_reference(s, torch.tensor([2, 0]), one)
    assert torch.isinf(out[0]).tolist() == [False, False, False, True, True]  # tie at k survives
    assert not torch.isinf(out[1]).any()                                        # k = 0: off
    p = torch.softmax(s[0].double(), 0)
    out = filter_scores_reference(s[:1], torch.tensor([0]), p[:1] + 1e-4)
    # the crossing token stays; of the tied pair, the lower id comes first
    assert torch.isinf(out[0]).tolist() == [False, False, True, True, True]
    out = filter_scores_reference(s[:1], torch.tensor([0]), p[:1] + p[1] + 1e-4)
    assert torch.isinf(out[0]).tolist() == [False, False, False, True, True]


def guided_scores(c, u, s, a=None, image_scale=None):
    ones = torch.ones(len(c))
    guide = torch.full((len(c),), 1 if a is None else 2)
    return guided_scores_reference(c, u, a, guide, s, ones if a is None else image_scale,
                                   torch.ones(1, c.shape[1], dtype=torch.uint8),
                                   torch.zeros(len(c), dtype=torch.int64), ones)


def test_cfg_formula_in_log_softmax_space():
    c, u = torch.randn(2, 7), torch.randn(2, 7)
    s = torch.tensor([3.0, 1.0])
    got = guided_scores(c, u, s)
    lc, lu = torch.log_softmax(c, -1), torch.log_softmax(u, -1)
    torch.testing.assert_close(got[0], lu[0] + 3.0 * (lc[0] - lu[0]))
    torch.testing.assert_close(got[1], lc[1])  # s = 1 is the conditional distribution
    a = torch.randn(2, 7)
    la = torch.log_softmax(a, -1)
    three = guided_scores(c, u, s, a, torch.tensor([2.0, 2.0]))
    torch.testing.assert_close(three[0], la[0] + 2.0 * (lu[0] - la[0]) + 3.0 * (lc[0] - lu[0]))


def test_masks_per_kind(tok):
    sp = tok.special
    m = GrammarMasks(sp, tok.vocab_size, "cpu")
    kinds = torch.tensor([StepKind.TEXT, StepKind.TEXT, StepKind.VISUAL, StepKind.DIGIT_NONZERO,
                          StepKind.DIGIT])
    allowed = m.allowed(kinds, torch.tensor([True, False, True, True, True]))
    text = allowed[0].nonzero().squeeze(1).tolist()
    assert sp.boi in text and sp.eos in text and sp.visual_base not in text
    assert not {sp.eol, sp.img, sp.eoi, sp.pad, sp.bos} & set(text)  # stray structure tokens
    assert not allowed[1, sp.boi]                                      # no budget for an image
    assert allowed[2].nonzero().min() == sp.visual_base and allowed[2].sum() == sp.num_visual
    assert allowed[3].nonzero().squeeze(1).tolist() == sorted(sp.digits[1:])
    assert allowed[4].nonzero().squeeze(1).tolist() == sorted(sp.digits)


def test_grammar_walks_an_image_and_parses_auto_headers(tok):
    sp = tok.special
    codes = (torch.arange(12 * 13) % sp.num_visual).view(12, 13)  # auto headers are 10..99
    span = image_span_ids(tok, codes)
    g = GrammarState(sp)
    assert g.next_step() == (StepKind.TEXT, -1)
    kinds = []
    for t in span:
        kind, forced = g.next_step() if g.in_image() else (None, -1)
        kinds.append(kind)
        if forced >= 0:
            assert forced == t
        g.advance(t)
    # BOI is sampled in text mode; '1','2' and '1','3' are auto digits, '*' and IMG forced
    assert kinds[1:7] == [StepKind.DIGIT_NONZERO, StepKind.DIGIT, StepKind.FORCED,
                          StepKind.DIGIT_NONZERO, StepKind.DIGIT, StepKind.FORCED]
    assert kinds.count(StepKind.VISUAL) == 12 * 13 and kinds[-1] == StepKind.FORCED
    assert kinds.count(StepKind.FORCED) == 2 + 11 + 1  # '*', IMG, EOLs, EOI
    assert g.fixed_grid == ImageGrid(12, 13) and g.images_done == 1
    assert g.next_step()[0] is StepKind.TEXT
    assert header_tokens(sp, ImageGrid(55, 73))[:-1] == tok.encode_text("55*73")
    assert grid_from_prompt(sp, tuple(tok.encode_text("hi")) + tuple(span)) == ImageGrid(12, 13)
    assert grid_from_prompt(sp, tuple(tok.encode_text("no image"))) is None


def test_detokenizer_holds_split_utf8_and_switches_channels(tok):
    d = IncrementalDetokenizer(tok)
    ids = tok.encode_text("héllo ✓")
    pieces = [d.push(t) for t in ids]
    text = "".join(p[1] for p in pieces if p)
    assert text == "héllo ✓"
    assert d.push(tok.special.bog) is None
    out = d.push(tok.encode_text("a")[0])
    assert out == ("global_cot", "a")
    d.push(tok.special.eog)
    assert d.push(tok.encode_text("b")[0]) == ("text", "b")


def test_detokenizer_replaces_invalid_bytes_as_a_whole_decode_does(tok):
    """A valid lead byte right after an invalid one must wait for its continuation."""
    by_bytes = {tok.token_bytes(i): i for i in range(tok.special.pad)}
    ids = [by_bytes[bytes([b])] for b in (0xEA, 0xD3, 0xBC, 0xE0)] + tok.encode_text("St\u00e9")
    d = IncrementalDetokenizer(tok)
    pieces = [d.push(t) for t in ids] + [d.flush()]
    assert "".join(p[1] for p in pieces if p) == tok.decode(ids) == "\ufffd\u04fc\ufffdSt\u00e9"


def test_block_pool_accounting_and_prefix_sharing():
    pool = BlockPool(6, 4)
    kv = KVBlocks(pool)
    a = Sequence(Role.UNCOND, tuple(range(10)))
    kv.reserve(a, 10)
    kv.commit(a, 10)
    assert pool.num_used == 3 and a.num_published == 2
    b = Sequence(Role.UNCOND, tuple(range(9)) + (99,))
    assert kv.reuse_prefix(b) == 8 and b.block_table == a.block_table[:2]
    kv.free(a)
    assert pool.num_used == 2  # b still holds the shared blocks
    kv.free(b)
    assert pool.num_used == 0
    c = Sequence(Role.UNCOND, tuple(range(10)))
    assert kv.reuse_prefix(c) == 8  # freed blocks stay cached until reused
    kv.free(c)
    with pytest.raises(OutOfBlocks):
        for _ in range(7):
            pool.allocate()
    pool.check()
