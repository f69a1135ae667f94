"""factrace.run"""
