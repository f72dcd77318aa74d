"""A processor of external kinds written with httpx only, run as its own process."""
