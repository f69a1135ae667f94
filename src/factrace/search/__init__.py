"""factrace.search"""
