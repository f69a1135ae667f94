"""factrace.report"""
