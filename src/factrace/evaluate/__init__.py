"""factrace.evaluate"""
