"""topology/builders."""
