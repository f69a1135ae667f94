"""factrace.data"""
