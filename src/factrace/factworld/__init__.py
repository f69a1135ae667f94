"""factrace.factworld"""
