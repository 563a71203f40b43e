"""The engine's sampler (fused guided scores, fast draw) against the oracle's plain per-row
sampling (tests/engine/plain_reference.py), token for token, on random batches mixing every
step kind, guidance mode and filter setting, temperatures included; and batch invariance."""
from __future__ import annotations

import pytest
import torch

from kernels.sampling import GUIDE_CFG, GUIDE_NONE, GUIDE_THREE_WAY
from services.engine.grammar import StepKind
from services.engine.request import SamplingParams
from services.engine.sampler import GrammarMasks, RowSampling, SamplingBatch, sample
from services.model.synthetic_vocab import write_synthetic_tokenizer
from services.model.text_tokenizer import TextTokenizer

from .plain_reference import sample as oracle_sample

NEG_INF = float("-inf")


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    d = tmp_path_factory.mktemp("vocab")
    write_synthetic_tokenizer(d, 300)
    return TextTokenizer.from_dir(d)


# (kind, allow_boi, guide) per row shape; forced rows carry a token instead
SHAPES = [(StepKind.TEXT, True, GUIDE_NONE), (StepKind.TEXT, False, GUIDE_NONE),
          (StepKind.VISUAL, True, GUIDE_CFG), (StepKind.VISUAL, True, GUIDE_THREE_WAY),
          (StepKind.VISUAL, True, GUIDE_NONE), (StepKind.DIGIT, True, GUIDE_NONE),
          (StepKind.DIGIT_NONZERO, True, GUIDE_NONE), (StepKind.FORCED, True, GUIDE_NONE)]


def random_rows(tok, seed: int, n: int):
    gen = torch.Generator().manual_seed(seed)

    def pick(options):
        return options[int(torch.randint(len(options), (1,), generator=gen))]
    rows = []
    for i in range(n):
        kind, allow_boi, guide = SHAPES[i % len(SHAPES)]
        params = SamplingParams(pick([0, 1, 3, 40, 5120, tok.vocab_size]),
                                pick([1.0, 0.9, 0.3, 1e-6]), pick([1.0, 0.7, 1.4]))
        rows.append(RowSampling(
            kind, tok.special.eol if kind is StepKind.FORCED else -1, allow_boi, params, guide,
            cfg_scale=pick([3.0, 5.0, 2.7]), image_cfg_scale=pick([1.0, 1.5]),
            uniform=float(torch.rand(1, generator=gen, dtype=torch.float64))))
    logits = [3 * torch.randn(n, tok.vocab_size, generator=gen) for _ in range(3)]
    return rows, logits


def text_mask(tok, allow_boi: bool) -> list[int]:
    """Spec §5.2 plus the production rules of §12 items 16 and 28, written out."""
    sp = tok.special
    banned = [sp.eol, sp.img, sp.eoi, sp.pad, sp.bos] + ([] if allow_boi else [sp.boi])
    return banned + list(range(sp.visual_base, tok.vocab_size))


def oracle_row(tok, row: RowSampling, c, u, a) -> int:
    """One row the plain way: the oracle's formulas and masks, then its single-row sampler."""
    sp = tok.special
    if row.forced >= 0:
        return row.forced
    scores = c.clone()
    if row.kind is StepKind.VISUAL:
        if row.guide != GUIDE_NONE:
            lc, lu = torch.log_softmax(c, -1), torch.log_softmax(u, -1)
            s = row.cfg_scale
            scores = s * (lc - lu) + lu
            if row.guide == GUIDE_THREE_WAY:
                la = torch.log_softmax(a, -1)
                scores = la + row.image_cfg_scale * (lu - la) + s * (lc - lu)
        scores[:sp.visual_base] = NEG_INF
    elif row.kind is StepKind.TEXT:
        scores[text_mask(tok, row.allow_boi)] = NEG_INF
    else:
        allowed = list(sp.digits[1:] if row.kind is StepKind.DIGIT_NONZERO else sp.digits)
        scores = torch.full_like(c, NEG_INF)
        scores[allowed] = c[allowed]
    return oracle_sample(scores, row.params, row.uniform)


def run_sampler(tok, masks, rows, logits):
    cond, uncond, full = logits
    batch = SamplingBatch.build(rows, tok.vocab_size, "cpu")
    return sample(cond, uncond, full, batch, masks)


@pytest.mark.parametrize("seed", range(6))
def test_sampler_equals_the_plain_per_row_path(tok, seed):
    masks = GrammarMasks(tok.special, tok.vocab_size, "cpu")
    rows, logits = random_rows(tok, seed, 24)
    got = run_sampler(tok, masks, rows, logits)
    want = [oracle_row(tok, r, *(x[i] for x in logits)) for i, r in enumerate(rows)]
    assert got == want


def test_a_row_draws_the_same_token_alone_or_in_any_batch(tok):
    masks = GrammarMasks(tok.special, tok.vocab_size, "cpu")
    rows, logits = random_rows(tok, 42, 16)
    together = run_sampler(tok, masks, rows, logits)
    for i in range(16):
        alone = run_sampler(tok, masks, rows[i:i + 1], [x[i:i + 1] for x in logits])
        assert alone == [together[i]], i
    # without any guided row the batch has no uncond at all: unguided rows are unaffected
    plain = [i for i, r in enumerate(rows) if r.guide == GUIDE_NONE]
    sub = run_sampler(tok, masks, [rows[i] for i in plain], [logits[0][plain], None, None])
    assert sub == [together[i] for i in plain]


def test_tied_rows_beyond_the_shared_top_k_take_the_exact_path(tok):
    masks = GrammarMasks(tok.special, tok.vocab_size, "cpu")
    rows, logits = random_rows(tok, 7, 2)
    rows = [RowSampling(StepKind.TEXT, -1, True, SamplingParams(3, 0.9), uniform=0.61),
            RowSampling(StepKind.TEXT, -1, True, SamplingParams(2, 1.0), uniform=0.3)]
    logits[0][0] = 1.0  # every text id tied: far more than the shared k = 3
    got = run_sampler(tok, masks, rows, [logits[0], None, None])
    assert got == [oracle_row(tok, r, logits[0][i], None, None) for i, r in enumerate(rows)]


def test_masks_table_matches_allowed(tok):
    masks = GrammarMasks(tok.special, tok.vocab_size, "cpu")
    sp = tok.special
    text = masks.allowed(torch.tensor([StepKind.TEXT]), torch.tensor([False]))[0]
    assert set((~text).nonzero().flatten().tolist()) == set(text_mask(tok, False))
    assert masks.table.dtype == torch.uint8 and masks.table.shape == (5, tok.vocab_size)
    assert masks.table[:, sp.boi].tolist() == [1, 0, 0, 0, 0]
