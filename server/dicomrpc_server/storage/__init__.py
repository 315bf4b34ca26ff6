"""Storage: instance files (blobs) and the LMDB index, behind two small interfaces."""
