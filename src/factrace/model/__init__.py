"""factrace.model"""
