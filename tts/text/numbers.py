"""English numbers in words, and the number expansion of keithito's tacotron `numbers.py`.

FastSpeech 2 checkpoints (ming024) were trained on text cleaned by keithito's `normalize_numbers`, which words numbers
with the `inflect` package; g2p_en ships the same function. We write the words ourselves, reproducing inflect's
spelling exactly where those functions use it (hyphens "twenty-one", commas between thousands groups, "and" before a
final group under a hundred, years read in pairs "nineteen eighty-four"), so text cleaned here equals the reference
without the dependency. `plain=True` drops those hyphens and commas: a comma or hyphen becomes a pause ("sp") in
ming024's `preprocess_english`, which is wrong in the middle of a number.
"""

from __future__ import annotations

import re

_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
         "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
# inflect stops at decillion (10**33); the reference raises above it, we read such numbers digit by digit.
_SCALES = ["", "thousand", "million", "billion", "trillion", "quadrillion", "quintillion", "sextillion",
           "septillion", "octillion", "nonillion", "decillion"]
# Ordinal endings in inflect's order of preference; anything else takes "th".
_ORDINAL_ENDINGS = re.compile(r"(ty|one|two|three|five|eight|nine|twelve)\Z")
_ORDINAL_OF = {"ty": "tieth", "one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
               "nine": "ninth", "twelve": "twelfth"}


def _under_hundred(n: int) -> str:
    if n < 20:
        return _ONES[n]
    tens, units = divmod(n, 10)
    return _TENS[tens] + ("-" + _ONES[units] if units else "")


def _under_thousand(n: int, andword: str) -> str:
    hundreds, rest = divmod(n, 100)
    if not hundreds:
        return _under_hundred(rest)
    if not rest:
        return f"{_ONES[hundreds]} hundred"
    joiner = f" {andword} " if andword else " "
    return f"{_ONES[hundreds]} hundred{joiner}{_under_hundred(rest)}"


def _digits(n: int) -> str:
    return " ".join(_ONES[int(d)] for d in str(n))


def cardinal(n: int, andword: str = "") -> str:
    """Words for n >= 0, as inflect's `number_to_words(n, andword=andword)`: 1234567 -> "one million, two hundred
    thirty-four thousand, five hundred sixty-seven"; 1001 -> "one thousand one" ("one thousand and one" with
    andword="and")."""
    if n < 0:
        return "minus " + cardinal(-n, andword)
    if n == 0:
        return "zero"
    groups = []  # (value, scale index), most significant first, zero groups skipped
    scale, rest = 0, n
    while rest:
        rest, value = divmod(rest, 1000)
        if value:
            groups.append((value, scale))
        scale += 1
    if scale > len(_SCALES):
        raise ValueError(f"{n} is past decillions")
    groups.reverse()
    words = [(_under_thousand(v, andword) + (" " + _SCALES[s] if s else "")) for v, s in groups]
    out = ", ".join(words[:-1])
    last_value, last_scale = groups[-1]
    if not out:
        return words[-1]
    # inflect joins a last group that is one word (under a hundred, no scale) with "and" instead of a comma.
    if last_scale == 0 and last_value < 100:
        return out + (f" {andword} " if andword else " ") + words[-1]
    return out + ", " + words[-1]


def ordinal(n: int) -> str:
    """Words for the ordinal of n >= 0, as inflect's `number_to_words("21st")` (note its default andword "and"):
    101 -> "one hundred and first", 20 -> "twentieth"."""
    words = cardinal(n, andword="and")
    head, _, last = words.rpartition(" ")
    if last == "zero":
        last = "zeroth"
    else:
        new = _ORDINAL_ENDINGS.sub(lambda m: _ORDINAL_OF[m.group(1)], last)
        last = new if new != last else last + "th"
    return f"{head} {last}" if head else last


def year(n: int) -> str:
    """keithito's reading of 1000 < n < 3000: 1984 -> "nineteen eighty-four", 1905 -> "nineteen oh five",
    2005 -> "two thousand five", 1900 -> "nineteen hundred"."""
    if n == 2000:
        return "two thousand"
    if 2000 < n < 2010:
        return "two thousand " + cardinal(n % 100)
    high, low = divmod(n, 100)
    if low == 0:
        return cardinal(high) + " hundred"
    return _under_hundred(high) + " " + (_under_hundred(low) if low >= 10 else "oh " + _ONES[low])


def _number(n: int) -> str:
    return year(n) if 1000 < n < 3000 else cardinal(n)


_comma_number_re = re.compile(r"([0-9][0-9\,]+[0-9])")
_decimal_number_re = re.compile(r"([0-9]+\.[0-9]+)")
_pounds_re = re.compile(r"£([0-9\,]*[0-9]+)")
_dollars_re = re.compile(r"\$([0-9\.\,]*[0-9]+)")
_ordinal_re = re.compile(r"[0-9]+(st|nd|rd|th)")
_number_re = re.compile(r"[0-9]+")


def _expand_dollars(m: re.Match) -> str:
    # keithito's rules, quirks included: "$3.5" is three dollars and five cents.
    match = m.group(1)
    parts = match.split(".")
    if len(parts) > 2:
        return match + " dollars"
    dollars = int(parts[0]) if parts[0] else 0
    cents = int(parts[1]) if len(parts) > 1 and parts[1] else 0
    dollar_unit = "dollar" if dollars == 1 else "dollars"
    cent_unit = "cent" if cents == 1 else "cents"
    if dollars and cents:
        return f"{dollars} {dollar_unit}, {cents} {cent_unit}"
    if dollars:
        return f"{dollars} {dollar_unit}"
    if cents:
        return f"{cents} {cent_unit}"
    return "zero dollars"


def _say(words: str, plain: bool) -> str:
    return words.replace("-", " ").replace(",", "") if plain else words


def normalize_numbers(text: str, plain: bool = False) -> str:
    """keithito's `normalize_numbers`: commas in numbers dropped, pounds and dollars, decimals ("3.14" -> "three
    point fourteen"), ordinals, years, cardinals. Equal to the reference when plain is False."""
    text = _comma_number_re.sub(lambda m: m.group(1).replace(",", ""), text)
    text = _pounds_re.sub(r"\1 pounds", text)
    text = _dollars_re.sub(_expand_dollars, text)
    text = _decimal_number_re.sub(lambda m: m.group(1).replace(".", " point "), text)
    text = _ordinal_re.sub(lambda m: _say(_ordinal_words(m.group(0)), plain), text)
    return _number_re.sub(lambda m: _say(_number_words(m.group(0)), plain), text)


def _ordinal_words(token: str) -> str:
    digits = token[:-2]
    n = int(digits)
    return ordinal(n) if n < 1000 ** len(_SCALES) else _digits(n) + " " + token[-2:]


def _number_words(token: str) -> str:
    n = int(token)
    return _number(n) if n < 1000 ** len(_SCALES) else _digits(n)
