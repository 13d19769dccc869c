"""Jobs: fine-tune (train/evaluate/predict), pretrain, distill and export, each a function over a typed
config that returns its results. A job owns run identity, output dirs and resume; `cli/` turns flags into
these configs and prints."""
