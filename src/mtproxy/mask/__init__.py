"""Everything about the mask host: is it up, and what does its TLS 1.3 answer look like."""
