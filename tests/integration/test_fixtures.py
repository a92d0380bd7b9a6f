"""The shared fixtures really work: Ray tasks reach the S3 server over HTTP."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from multimodal import fs

pytestmark = pytest.mark.integration


def test_ray_reads_parquet_from_s3_server(ray_cluster, s3_server, s3_bucket):
    import ray

    uri = f"s3://{s3_bucket}/smoke/part-0.parquet"
    filesystem, path = fs.filesystem_for(uri)
    with filesystem.open_output_stream(path) as out:
        pq.write_table(pa.table({"x": list(range(10))}), out)
    assert s3_server.keys(s3_bucket) == ["smoke/part-0.parquet"]

    dataset = ray.data.read_parquet(f"s3://{s3_bucket}/smoke/", filesystem=fs.s3_filesystem())
    assert sorted(row["x"] for row in dataset.take_all()) == list(range(10))
    assert ray.cluster_resources()["CPU"] == 4
