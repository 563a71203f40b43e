"""Incremental detokenisation: each new text token's bytes are appended to a buffer and only
complete UTF-8 is emitted, so streaming never re-decodes what was already sent (spec §12
item 25) and multi-byte characters split across tokens come out whole."""
from __future__ import annotations

from services.model.text_tokenizer import TextTokenizer


class IncrementalDetokenizer:
    def __init__(self, tok: TextTokenizer):
        self.tok = tok
        self.pending = b""
        s = tok.special
        self.silent = {s.ess, s.eos, s.bog, s.eog, s.boc, s.eoc, s.pad, s.bos, s.bss}
        self.channel_open = {s.bog: "global_cot", s.boc: "image_cot"}
        self.channel_close = {s.eog, s.eoc}
        self.channel = "text"

    def push(self, token: int) -> tuple[str, str] | None:
        """Feed one text-mode token; returns (channel, text) when there is text to emit."""
        if token in self.channel_open or token in self.channel_close:
            out = self.flush()
            self.channel = self.channel_open.get(token, "text")
            return out
        if token in self.silent:
            return None
        self.pending += self.tok.token_bytes(token)
        try:
            text = self.pending.decode("utf-8")
        except UnicodeDecodeError as e:
            if e.reason != "unexpected end of data" or len(self.pending) - e.start > 3:
                return self.flush()  # invalid bytes: replace, as the reference decodes
            text = self.pending[:e.start].decode("utf-8")
            self.pending = self.pending[e.start:]
            return (self.channel, text) if text else None
        self.pending = b""
        return self.channel, text

    def flush(self) -> tuple[str, str] | None:
        if not self.pending:
            return None
        text, self.pending = self.pending.decode("utf-8", errors="replace"), b""
        return self.channel, text
