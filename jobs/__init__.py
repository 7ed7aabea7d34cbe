"""spark-submit entry points: parse arguments, load settings, call one library function."""
