"""factrace.encode"""
