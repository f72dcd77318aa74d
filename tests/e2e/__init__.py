"""Browser tests of the progress page (headless Debian chromium via playwright)."""
