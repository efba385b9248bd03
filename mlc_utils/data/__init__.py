"""The data as users download it: the competition CSVs, labels, the split, images and captions as inputs, the demo generator."""
