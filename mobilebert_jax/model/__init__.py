"""The model: config, blocks, encoder, the eight `MobileBert*` heads, outputs, losses (pure linen)."""
