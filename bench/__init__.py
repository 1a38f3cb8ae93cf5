"""``make bench``: speed and memory of imgmig measured against references run in the same process."""
