"""Tests for twisted-serversock."""
