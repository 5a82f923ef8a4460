"""Offline key-patch preprocessing: EdgeBoxes to sharded TFRecords."""
