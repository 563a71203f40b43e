"""Incremental detokenisation: each new text token's bytes go through an incremental UTF-8
decoder and only complete characters are emitted, so streaming never re-decodes what was
already sent (spec §12 item 25), multi-byte characters split across tokens come out whole, and
invalid bytes are replaced exactly as decoding the whole run at once would replace them."""
from __future__ import annotations

import codecs

from services.model.text_tokenizer import TextTokenizer


class IncrementalDetokenizer:
    def __init__(self, tok: TextTokenizer):
        self.tok = tok
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
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
        text = self.decoder.decode(self.tok.token_bytes(token))
        return (self.channel, text) if text else None

    def flush(self) -> tuple[str, str] | None:
        """Emit what is held back (an unfinished character becomes a replacement)."""
        text = self.decoder.decode(b"", final=True)
        self.decoder.reset()
        return (self.channel, text) if text else None
