// This file is managed by confd. Do not edit.
// Backends of cache_text in esams, from /conftool/v1/pools/esams/cache_text/ats-be

sub vcl_init {
    new cache_local = directors.shard();
    new cache_local_random = directors.random();


    cache_local.add_backend(be_cp3102_esams_wmnet);
    cache_local_random.add_backend(be_cp3102_esams_wmnet, 10);


    cache_local.add_backend(be_cp3103_esams_wmnet);
    cache_local_random.add_backend(be_cp3103_esams_wmnet, 10);


    cache_local.add_backend(be_cp3106_esams_wmnet);
    cache_local_random.add_backend(be_cp3106_esams_wmnet, 1);

    cache_local.reconfigure();
}
