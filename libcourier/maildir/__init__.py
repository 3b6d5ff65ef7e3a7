"""Maildir++ store: folders, flags, UIDs, keywords, quota, delivery (FORMATS.md §3.3-3.7)."""
