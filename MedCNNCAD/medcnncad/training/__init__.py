"""Training segmentation models and lesion grade classifiers; training data from phantoms or files."""
