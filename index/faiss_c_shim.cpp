/* The FAISS C API functions kvseek calls (official signatures from faiss/c_api/), implemented
 * over the C++ API, which is all Debian's libfaiss ships; C++ exceptions become the C API's
 * error codes (-2 FAISS, -4 std, -1 other) with the message kept for faiss_get_last_error(). */
#include <faiss/Clustering.h>
#include <faiss/Index.h>
#include <faiss/impl/FaissException.h>
#include <faiss/index_factory.h>

#include <exception>
#include <string>

extern "C" {
#include <faiss/c_api/Clustering_c.h>
#include <faiss/c_api/Index_c.h>
#include <faiss/c_api/error_c.h>
#include <faiss/c_api/index_factory_c.h>
}

namespace {

thread_local std::string last_error;

/* Runs f, mapping exceptions to the C API's codes. */
template <typename F>
int guarded(F f) {
    try {
        f();
        return 0;
    } catch (const faiss::FaissException &e) {
        last_error = e.what();
        return -2;
    } catch (const std::exception &e) {
        last_error = e.what();
        return -4;
    } catch (...) {
        last_error = "unknown C++ exception in FAISS";
        return -1;
    }
}

faiss::Index *ix(FaissIndex *p) { return reinterpret_cast<faiss::Index *>(p); }
const faiss::Index *ix(const FaissIndex *p) { return reinterpret_cast<const faiss::Index *>(p); }
faiss::Clustering *clus(FaissClustering *p) { return reinterpret_cast<faiss::Clustering *>(p); }

} // namespace

extern "C" {

const char *faiss_get_last_error() { return last_error.c_str(); }

/* ---- Index_c.h ---- */

void faiss_Index_free(FaissIndex *obj) { delete ix(obj); }

int faiss_Index_add(FaissIndex *index, idx_t n, const float *x) {
    return guarded([&] { ix(index)->add(n, x); });
}

int faiss_Index_search(const FaissIndex *index, idx_t n, const float *x, idx_t k,
                       float *distances, idx_t *labels) {
    return guarded([&] { ix(index)->search(n, x, k, distances, labels); });
}

/* ---- index_factory_c.h ---- */

int faiss_index_factory(FaissIndex **p_index, int d, const char *description,
                        FaissMetricType metric) {
    return guarded([&] {
        *p_index = reinterpret_cast<FaissIndex *>(
                faiss::index_factory(d, description, static_cast<faiss::MetricType>(metric)));
    });
}

/* ---- Clustering_c.h ---- */

void faiss_ClusteringParameters_init(FaissClusteringParameters *params) {
    faiss::ClusteringParameters d;
    params->niter = d.niter;
    params->nredo = d.nredo;
    params->verbose = d.verbose;
    params->spherical = d.spherical;
    params->int_centroids = d.int_centroids;
    params->update_index = d.update_index;
    params->frozen_centroids = d.frozen_centroids;
    params->min_points_per_centroid = d.min_points_per_centroid;
    params->max_points_per_centroid = d.max_points_per_centroid;
    params->seed = d.seed;
    params->decode_block_size = d.decode_block_size;
}

int faiss_Clustering_new_with_params(FaissClustering **p_clustering, int d, int k,
                                     const FaissClusteringParameters *cp) {
    return guarded([&] {
        faiss::ClusteringParameters p;
        p.niter = cp->niter;
        p.nredo = cp->nredo;
        p.verbose = cp->verbose;
        p.spherical = cp->spherical;
        p.int_centroids = cp->int_centroids;
        p.update_index = cp->update_index;
        p.frozen_centroids = cp->frozen_centroids;
        p.min_points_per_centroid = cp->min_points_per_centroid;
        p.max_points_per_centroid = cp->max_points_per_centroid;
        p.seed = cp->seed;
        p.decode_block_size = cp->decode_block_size;
        *p_clustering = reinterpret_cast<FaissClustering *>(new faiss::Clustering(d, k, p));
    });
}

int faiss_Clustering_train(FaissClustering *clustering, idx_t n, const float *x,
                           FaissIndex *index) {
    return guarded([&] { clus(clustering)->train(n, x, *ix(index)); });
}

void faiss_Clustering_centroids(FaissClustering *clustering, float **centroids, size_t *size) {
    std::vector<float> &c = clus(clustering)->centroids;
    if (centroids) *centroids = c.data();
    if (size) *size = c.size();
}

void faiss_Clustering_free(FaissClustering *clustering) { delete clus(clustering); }

} // extern "C"
