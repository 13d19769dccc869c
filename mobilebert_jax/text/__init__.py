"""Text: the WordPiece tokenizer on `tokenizers`, equal to HF's fast BERT tokenizer."""
