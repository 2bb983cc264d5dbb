"""Received media: downloaded in the background, kept on disk for a while, served by signed
links (links.py: the URLs; files.py: the directory; fetch.py: the downloader)."""
