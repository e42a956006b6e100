"""Tokenizers read from GGUF metadata, giving llama.cpp's token ids.

- `gpt2` (byte-level BPE): the text is split by the pre-tokenizer regexes llama.cpp applies for
  `tokenizer.ggml.pre` (each regex splits every piece left by the previous one, keeping both
  the matches and the text between them), every byte of a piece is mapped to GPT-2's printable
  unicode alphabet, and the piece is merged pair by pair: always the pair with the lowest merge
  rank, the leftmost on a tie.
- `llama` (SentencePiece BPE, Gemma): spaces become U+2581 (a space is prefixed only when
  `add_space_prefix`), the text is split into UTF-8 characters, and adjacent symbols are merged
  while their concatenation is a token: the highest score first, the leftmost on a tie. A symbol
  that is no token is re-split along its merges, and what is left is written as <0xXX> byte
  tokens.

Special tokens: user-defined tokens (type 4) are always cut out of the text as whole tokens
before either algorithm runs; control tokens (type 3) only when `parse_special`. BOS is added
when `tokenizer.ggml.add_bos_token` says so (llama.cpp's default for each vocabulary type when
the key is absent: yes for `llama`, no for `gpt2`).
"""
from __future__ import annotations

import heapq

import regex

from ..errors import FormatError

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

_GPT2_RE = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
# llama.cpp's regex lists per pre-tokenizer name (llama-vocab.cpp, llm_tokenizer_bpe)
PRE_TOKENIZERS = {
    "default": [r"[\p{P}\$\+<=>\^~\|]+", _GPT2_RE, r"\p{N}+", r"[0-9][0-9][0-9]"],
    "gpt2": [_GPT2_RE],
    "smollm": [r"\p{N}", _GPT2_RE],
    "llama-bpe": [r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"],
    "qwen2": [r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"],
    "falcon": [r"[\p{P}\$\+<=>\^~\|`]+", _GPT2_RE, r"[0-9][0-9][0-9]"],
}
# names llama.cpp maps to the same regex list
for _alias, _same in [("gpt-2", "gpt2"), ("mpt", "gpt2"), ("olmo", "gpt2"), ("starcoder", "smollm"),
                      ("refact", "smollm"), ("command-r", "smollm"), ("codeshell", "smollm"),
                      ("llama3", "llama-bpe"), ("stablelm2", "qwen2")]:
    PRE_TOKENIZERS[_alias] = PRE_TOKENIZERS[_same]
# pre-tokenizers for which llama.cpp takes a whole word that is a token as it is (ignore_merges)
IGNORE_MERGES = {"llama-bpe", "llama3"}


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from the 256 bytes to printable characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def regex_split(text: str, exprs: list[str]) -> list[str]:
    pieces = [text]
    for e in exprs:
        r = regex.compile(e)
        out = []
        for p in pieces:
            pos = 0
            for m in r.finditer(p):
                if m.start() > pos:
                    out.append(p[pos:m.start()])
                if m.end() > m.start():
                    out.append(m.group())
                pos = m.end()
            if pos < len(p):
                out.append(p[pos:])
        pieces = out
    return pieces


class Tokenizer:
    def __init__(self, metadata: dict):
        md = metadata
        self.model = md.get("tokenizer.ggml.model")
        if self.model not in ("gpt2", "llama"):
            raise FormatError(f"tokenizer model {self.model!r} is not supported (gpt2, llama)")
        self.tokens = [str(t) for t in md["tokenizer.ggml.tokens"]]
        n = len(self.tokens)
        self.types = [int(t) for t in md.get("tokenizer.ggml.token_type", [NORMAL] * n)]
        self.scores = [float(s) for s in md.get("tokenizer.ggml.scores", [0.0] * n)]
        self.token_to_id = {}
        for i, t in enumerate(self.tokens):
            self.token_to_id.setdefault(t, i)
        self.bos = md.get("tokenizer.ggml.bos_token_id")
        self.eos = md.get("tokenizer.ggml.eos_token_id")
        self.add_bos = bool(md.get("tokenizer.ggml.add_bos_token", self.model == "llama"))
        self.add_space_prefix = bool(md.get("tokenizer.ggml.add_space_prefix", self.model == "llama"))
        self.pre = md.get("tokenizer.ggml.pre", "default")
        if self.model == "gpt2":
            if self.pre not in PRE_TOKENIZERS:
                raise FormatError(f"pre-tokenizer {self.pre!r} is not supported ({', '.join(PRE_TOKENIZERS)})")
            self.ranks = {}
            for i, m in enumerate(md.get("tokenizer.ggml.merges", [])):
                a, b = str(m).split(" ", 1)
                self.ranks[(a, b)] = i
            self.byte_map = bytes_to_unicode()
        # longest first, as llama.cpp's cache_special_tokens is sorted
        self.special = sorted((i for i, t in enumerate(self.types) if t in (CONTROL, USER_DEFINED, UNKNOWN)),
                              key=lambda i: -len(self.tokens[i].encode()))

    @classmethod
    def from_gguf(cls, path) -> "Tokenizer":
        from ..io.gguf import GGUFFile
        with GGUFFile(path) as f:
            return cls(f.metadata)

    # ------------------------------------------------------------------ special-token partition
    def _partition(self, text: str, parse_special: bool):
        frags: list = [text]
        for tid in self.special:
            if not parse_special and self.types[tid] in (CONTROL, UNKNOWN):
                continue
            tok = self.tokens[tid]
            if not tok:
                continue
            out = []
            for fr in frags:
                if not isinstance(fr, str) or tok not in fr:
                    out.append(fr)
                    continue
                parts = fr.split(tok)
                for k, part in enumerate(parts):
                    if part:
                        out.append(part)
                    if k < len(parts) - 1:
                        out.append(tid)
            frags = out
        return frags

    def encode(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        out: list[int] = []
        if add_special and self.add_bos and self.bos is not None:
            out.append(int(self.bos))
        prev_special = True
        if not text:                  # llama.cpp makes no fragment of an empty text
            return out
        for fr in self._partition(text, parse_special):
            if isinstance(fr, int):
                out.append(fr)
                prev_special = True
                continue
            if self.model == "gpt2":
                for w in regex_split(fr, PRE_TOKENIZERS[self.pre]):
                    word = "".join(self.byte_map[b] for b in w.encode("utf-8"))
                    if self.pre in IGNORE_MERGES and word in self.token_to_id:
                        out.append(self.token_to_id[word])
                    else:
                        out.extend(self._bpe(word))
            else:
                t = (" " if self.add_space_prefix and prev_special else "") + fr
                out.extend(self._spm(t.replace(" ", "\u2581")))
            prev_special = False
        return out

    # ------------------------------------------------------------------ byte-level BPE
    def _bpe(self, word: str) -> list[int]:
        syms = list(word)
        while len(syms) > 1:
            best, at = None, -1
            for i in range(len(syms) - 1):
                r = self.ranks.get((syms[i], syms[i + 1]))
                if r is not None and (best is None or r < best):
                    best, at = r, i
            if best is None:
                break
            syms[at:at + 2] = [syms[at] + syms[at + 1]]
        ids = []
        for s in syms:
            t = self.token_to_id.get(s)
            if t is not None:
                ids.append(t)
            else:
                ids.extend(self.token_to_id[c] for c in s if c in self.token_to_id)
        return ids

    # ------------------------------------------------------------------ SentencePiece BPE
    def _spm(self, text: str) -> list[int]:
        if not text:
            return []
        syms = list(text)
        n = len(syms)
        nxt = list(range(1, n)) + [-1]
        prv = list(range(-1, n - 1))
        alive = [True] * n
        heap = []
        merged_from: dict = {}

        def push(a, b):
            if a < 0 or b < 0:
                return
            s = syms[a] + syms[b]
            t = self.token_to_id.get(s)
            if t is None:
                return
            heapq.heappush(heap, (-self.scores[t], a, b, len(s)))

        for i in range(n - 1):
            push(i, i + 1)
        while heap:
            _, a, b, size = heapq.heappop(heap)
            if not alive[a] or not alive[b] or len(syms[a]) + len(syms[b]) != size or nxt[a] != b:
                continue
            merged_from[syms[a] + syms[b]] = (syms[a], syms[b])
            syms[a] = syms[a] + syms[b]
            alive[b] = False
            nxt[a] = nxt[b]
            if nxt[b] >= 0:
                prv[nxt[b]] = a
            push(prv[a], a)
            push(a, nxt[a])
        out: list[int] = []
        i = 0
        while i != -1:
            self._resegment(syms[i], merged_from, out)
            i = nxt[i]
        return out

    def _resegment(self, s: str, merged_from: dict, out: list[int]):
        t = self.token_to_id.get(s)
        if t is not None:
            out.append(t)
            return
        if s in merged_from:
            a, b = merged_from[s]
            self._resegment(a, merged_from, out)
            self._resegment(b, merged_from, out)
            return
        for byte in s.encode("utf-8"):
            out.append(self.token_to_id[f"<0x{byte:02X}>"])

    def decode(self, ids) -> str:
        if self.model == "gpt2":
            inv = {v: k for k, v in self.byte_map.items()}
            bs = bytearray()
            for i in ids:
                t = self.tokens[i]
                if self.types[i] in (CONTROL, USER_DEFINED):
                    bs += t.encode()
                else:
                    bs += bytes(inv[c] for c in t if c in inv)
            return bs.decode("utf-8", errors="replace")
        bs = bytearray()
        for i in ids:
            t = self.tokens[i]
            if self.types[i] == BYTE:
                bs.append(int(t[3:5], 16))
            else:
                bs += t.replace("\u2581", " ").encode()
        return bs.decode("utf-8", errors="replace")
