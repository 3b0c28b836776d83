"""Token ids -> text as FunASR prints it (``tokens.json`` + ``sentence_postprocess``).

Chinese characters are joined without spaces, English words with spaces, ``xx@@`` pieces glue to the next
token (a dangling piece at the end is dropped, as FunASR does), and runs of single letters become one upper-case
abbreviation (``i b m`` -> ``IBM``).
"""

from __future__ import annotations

import json
from os import PathLike

SKIP = frozenset({"<s>", "</s>", "<unk>", "<OOV>"})


def load_tokens(path: str | PathLike) -> list[str]:
    with open(path, encoding="utf-8") as f:
        tokens = json.load(f)
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise ValueError(f"{path}: tokens.json must be a JSON list of strings")
    return tokens


def _is_chinese(s: str) -> bool:
    # FunASR compares whole strings with the range ends (so a token counts by its first character).
    return "\u4e00" <= s <= "\u9fff" or "0" <= s <= "9" or s == "@"


def _all_chinese(tokens) -> bool:
    return bool(tokens) and all(_is_chinese(t.replace(" ", "")) for t in tokens)


def _all_alpha(tokens) -> bool:
    cleaned = [t.replace(" ", "") for t in tokens]
    return bool(cleaned) and all((t.isalpha() and not _is_chinese(t)) or t == "'" for t in cleaned)


def sentence(tokens: list[str]) -> str:
    """FunASR's ``sentence_postprocess`` without timestamps: items (tokens and " " separators), abbreviations, joined."""
    words = [t for t in tokens if t not in SKIP]
    items: list[str] = []
    pending = ""
    if _all_chinese(words):
        items = [w.replace(" ", "") for w in words]
    elif _all_alpha(words):
        for w in words:
            if "@@" in w:
                pending += w.replace("@@", "")
            else:
                items += [pending + w, " "]
                pending = ""
    else:
        after_word = False  # the last item is the space after an English word
        for w in words:
            if _all_chinese(w):  # per character, as FunASR calls it on the string
                if after_word:
                    items.pop()
                items.append(w)
                after_word = False
            elif "@@" in w:
                pending += w.replace("@@", "")
                after_word = False
            elif _all_alpha(w):
                items += [pending + w, " "]
                pending = ""
                after_word = True
            else:
                items.append(w)
    return "".join(_abbreviations(items)).strip()


def _letter(w: str) -> bool:
    return len(w) == 1 and w.encode("utf-8").isalpha()


def _abbreviations(items: list[str]) -> list[str]:
    """Runs of single letters separated by " " items become one upper-case item (``abbr_dispose``)."""
    out: list[str] = []
    i, n = 0, len(items)
    while i < n:
        if _letter(items[i]) and i + 2 < n and items[i + 1] == " " and _letter(items[i + 2]):
            j = i + 2
            while j + 2 < n and items[j + 1] == " " and _letter(items[j + 2]):
                j += 2
            out.append("".join(items[k].upper() for k in range(i, j + 1, 2)))
            i = j + 1
        else:
            out.append(items[i])
            i += 1
    return out
