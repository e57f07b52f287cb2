"""Data: downloads, raw readers, vocabularies / feature map, splits and batching."""
