"""The neutral bottom layer: file writing and checkpoint reading that every other layer may import."""
