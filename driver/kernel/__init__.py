"""(docstring filled in below)"""
