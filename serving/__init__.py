"""Serving through TF Serving's REST API: configs, client and dev server.

Empty in this release: SavedModel export and serving are the next milestone (README).
"""
